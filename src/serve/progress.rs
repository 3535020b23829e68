//! Write progress: how the [`super::watchdog`] knows a response is still being written.
//!
//! A response is in flight until its last byte has reached the socket, however slow the client
//! (DESIGN property 4). hyper drops a response body once its last chunk is *queued*, which can be
//! megabytes before that chunk is written to a client reading slowly, so "the body ended" is not
//! "the response ended". Two wrappers report to the connection's
//! [`ConnState`]:
//! - [`TrackedIo`] wraps the connection's I/O (the TCP stream, or the TLS stream around it). A
//!   write that makes progress stamps the connection's progress time; a write or flush that
//!   returns `Pending` marks the connection `BLOCKED` (output waits on the client); a flush that
//!   completes clears it and stamps the idle time from then. hyper (HTTP/1 and HTTP/2 alike)
//!   flushes its buffer to the end before it calls `poll_flush`, so a completed flush means
//!   nothing of the connection's output is left in the process.
//! - [`TrackedBody`] wraps each response body. From the moment the handler returns until the
//!   body ends, the connection is busy (as before), and the body counts as *stalled* while hyper
//!   holds it without asking it for data: hyper is waiting for the client (an HTTP/2 flow-control
//!   window of zero, or a full write buffer), not for the handler. A body that hyper has asked
//!   and that answered `Pending` waits for its handler (a slow or streaming response), which is
//!   not the client's fault and is never timed.
//!
//! The sweeper counts a connection that is `BLOCKED` or has a stalled body as busy: no idle,
//! keep-alive or drain-grace deadline closes it, and the drain waits for it (bounded by
//! `shutdown_timeout`). Only `send_timeout` without write progress cuts it: the client stopped
//! reading, which is the one case where cutting is right (nginx's `send_timeout`).
//!
//! The same state hears from request bodies (a body still to come is made with
//! [`crate::Body`]'s watched constructor and reports its handler's waits): a body that stalls for `idle_timeout` is answered `408` (see [`super::watchdog`]).
//! Requests without a body are not watched and pay nothing for it.
//!
//! Cost on the request path: a coarse-clock load and a store per write, a flag test per flush,
//! and two atomic additions on the connection's own state per response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::exchange::Recording;
use super::upgrade::{self, Stream};
use super::watchdog::{BLOCKED, ConnState, LAST_WORD, coarse_now_ms};
use crate::body::{Body, BodyError};

/// A connection's I/O, reporting write progress and pending output to its [`ConnState`].
#[derive(Debug)]
pub(crate) struct TrackedIo<I> {
    io: I,
    state: Arc<ConnState>,
    /// Once the connection is upgraded, the application's stream, watched by
    /// [`super::upgrade`] instead of the HTTP write tracking.
    stream: Option<Box<Stream>>,
    /// Whether hyper's `shutdown` at the connection's end reaches `io` ([`End`]).
    end: End,
}

/// What hyper's `poll_shutdown` does when it ends a connection it serves. hyper calls it just
/// before it returns, and the connection (socket included) is dropped right after.
///
/// On a plain socket (TCP or Unix), after an HTTP/1 request that had no body and whose answer
/// did not ask to close (so hyper closes because the client asked, `Connection: close`, by which
/// it promises to send nothing more, RFC 9112 §9.6; or because the client closed), it is left
/// to the `close` that follows, which sends the same FIN `shutdown(SHUT_WR)` would: one system
/// call less per such connection. Otherwise (a body, an answer that closes: draining, a
/// timeout) it is made. Where bytes the client sent are still unread
/// (a body a `413` left unread, a request after the last one), Linux answers `close` with a RST
/// either way (hyper has no lingering close), but a FIN sent first by `shutdown` reaches the
/// client before it, so the client reads the response and then the end of the stream rather than
/// "connection reset". A client that sends more after its own `Connection: close`, or after an
/// answer whose handler set `Connection: close` itself, gets the reset.
/// An upgraded connection's `shutdown` is the application's half-close, and always reaches the
/// socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Pass it on: TLS (the `close_notify` alert goes out first), and the readiness request's
    /// in-memory stream.
    Shutdown,
    /// Answer it at once without a syscall after the client's last word: a plain socket, about
    /// to be closed.
    Close,
}

impl<I> TrackedIo<I> {
    /// Wrap `io`, the connection registered as `state`, ending as `end` says.
    pub(crate) fn new(io: I, state: Arc<ConnState>, end: End) -> TrackedIo<I> {
        TrackedIo {
            io,
            state,
            stream: None,
            end,
        }
    }

    /// Note the outcome of a write.
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self
                .state
                .progress_ms
                .store(coarse_now_ms(), Ordering::Release),
            Poll::Pending => self.state.set(BLOCKED),
            _ => {}
        }
    }
}

impl<I> Drop for TrackedIo<I> {
    fn drop(&mut self) {
        if self.stream.is_some() {
            upgrade::dropped(&self.state);
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = this.stream.as_deref_mut() {
            return upgrade::poll_read(&mut this.io, &this.state, s, cx, buf);
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(s) = this.stream.as_deref_mut() {
            return upgrade::poll_write(&mut this.io, &this.state, s, cx, buf);
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(s) = this.stream.as_deref_mut() {
            // Frame by frame, one buffer at a time (the frames' bytes must be seen in order).
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return upgrade::poll_write(&mut this.io, &this.state, s, cx, buf);
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_none() && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = this.stream.as_deref_mut() {
            return upgrade::poll_flush(&mut this.io, &this.state, s, cx);
        }
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if r.is_ready() {
            // A `101` just flushed: the connection is the application's from now on.
            this.stream = upgrade::handed_over(&this.state);
        }
        match r {
            Poll::Ready(Ok(())) if this.state.flag(BLOCKED) => {
                // Stamp before clearing, so the sweeper never sees "not blocked" with an old
                // idle stamp.
                this.state
                    .since_ms
                    .store(coarse_now_ms(), Ordering::Release);
                this.state.clear(BLOCKED);
            }
            Poll::Pending => this.state.set(BLOCKED),
            _ => {}
        }
        if let Poll::Ready(Ok(())) = r {
            // Everything hyper held is written: so are the responses recorded as ended.
            this.state.unflushed.flushed();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.end == End::Close && this.stream.is_none() && this.state.flag(LAST_WORD) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl ConnState {
    /// Note whether the HTTP/1 request being answered had no body and its answer did not ask to
    /// close (see [`End`]).
    pub(super) fn last_word(&self, last: bool) {
        if last {
            self.set(LAST_WORD);
        } else if self.flag(LAST_WORD) {
            self.clear(LAST_WORD);
        }
    }
}

/// Request bodies report their handler's waits here; the sweeper times them (`idle_timeout`).
impl crate::body::BodyWatch for ConnState {
    fn wait_started(&self) {
        self.body_progress_ms
            .store(coarse_now_ms(), Ordering::Release);
        self.body_waiting.fetch_add(1, Ordering::AcqRel);
    }

    fn wait_ended(&self) {
        self.body_progress_ms
            .store(coarse_now_ms(), Ordering::Release);
        self.body_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a request's response is not finished; dropping it marks the connection idle (as
/// far as responses go: pending output is [`TrackedIo`]'s business).
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnState>);

impl Busy {
    /// `state` has one more request in flight (counted by the caller).
    pub(super) fn new(state: Arc<ConnState>) -> Busy {
        Busy(state)
    }

    /// True once the connection's generation has started draining.
    pub(crate) fn generation_draining(&self) -> bool {
        self.0.generation_draining()
    }

    /// Whether this HTTP/1 request is one after which hyper's closing the connection needs no
    /// `shutdown` ([`End`]).
    pub(super) fn last_word(&self, last: bool) {
        self.0.last_word(last);
    }

    /// This request's `101` hands the connection to the application ([`super::upgrade`]).
    pub(super) fn upgrading(&self, websocket: bool) {
        self.0.upgrading(websocket);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Stamp before the count drops, so the sweeper never sees "idle" with an old stamp.
        self.0.since_ms.store(coarse_now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it ends (hyper drops the body once the
/// last frame is queued, or when the connection dies), and counts as stalled while hyper holds it
/// without asking for data (see the module doc).
#[derive(Debug)]
pub(crate) struct TrackedBody {
    body: Body,
    /// True while counted in `ConnState::stalled`.
    stalled: bool,
    /// The request's recording, if its listener has an observer (see [`super::exchange`]).
    rec: Option<Recording>,
    busy: Busy,
}

impl TrackedBody {
    /// `body`, keeping `busy` (and the request's recording `rec`) until it is dropped. Handing a
    /// response to hyper is progress: the send timer starts now.
    pub(crate) fn new(body: Body, busy: Busy, rec: Option<Recording>) -> TrackedBody {
        let s = &busy.0;
        s.progress_ms.store(coarse_now_ms(), Ordering::Release);
        s.stalled.fetch_add(1, Ordering::AcqRel);
        TrackedBody {
            body,
            stalled: true,
            rec,
            busy,
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.stalled {
            self.busy.0.stalled.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(r) = self.rec.take() {
            // Finished by the flush that writes the last of it (or cut with the connection).
            self.busy.0.unflushed.push(r);
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(rec), Poll::Ready(Some(Ok(f)))) = (&mut this.rec, &r)
            && let Some(d) = f.data_ref()
        {
            rec.took(d.len());
        }
        match (&r, this.stalled) {
            // The handler's body failed: hyper resets the HTTP/2 stream, or closes the HTTP/1
            // connection, so the client never takes a cut response for a whole one.
            (Poll::Ready(Some(Err(e))), _) => {
                tracing::warn!(error = %e, "response body failed; the response is cut");
            }
            // Asked, and the handler has nothing yet: waiting on the handler, not the client.
            (Poll::Pending, true) => {
                this.stalled = false;
                this.busy.0.stalled.fetch_sub(1, Ordering::AcqRel);
            }
            // A chunk after a wait on the handler: hyper now holds it for the client.
            (Poll::Ready(Some(_)), false) => {
                let s = &this.busy.0;
                s.progress_ms.store(coarse_now_ms(), Ordering::Release);
                s.stalled.fetch_add(1, Ordering::AcqRel);
                this.stalled = true;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::watchdog::{Guard, Limits, Watchdog};
    use super::*;

    fn limits(send_ms: u64) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(50),
            keepalive_grace: Duration::from_millis(50),
            send_timeout: Duration::from_millis(send_ms),
            stream_grace: None,
            route_timeout: None,
        }
    }

    #[tokio::test]
    async fn blocked_output_outlives_idle_and_drain_deadlines_until_send_timeout() {
        let wd = Watchdog::start(limits(400));
        let (state, reg) = wd.register();
        // A response handed to hyper and its body dropped (the last chunk queued) ...
        let body = TrackedBody::new(Body::from("x"), state.request_started(), None);
        assert_eq!(state.stalled.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(state.stalled.load(Ordering::Relaxed), 0);
        // ... but not written: the socket said "not now".
        state.set(BLOCKED);
        let task = tokio::spawn(Guard::new(state.clone(), reg, std::future::pending()));
        wd.start_drain();
        // Writes keep making progress: neither idle_timeout nor the drain grace cuts it.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            state
                .progress_ms
                .store(super::super::watchdog::coarse_now_ms(), Ordering::Release);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!task.is_finished(), "cut while writing");
        }
        // No more progress: cut after send_timeout, not before.
        let stalled_at = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("not cut after send_timeout")
            .unwrap();
        assert!(stalled_at.elapsed() >= Duration::from_millis(300));
    }

    /// True if `peer` has read the end of the stream (the other side's FIN) within 200 ms.
    async fn sees_eof(peer: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(200), peer.read(&mut buf)).await;
        matches!(read, Ok(Ok(0)))
    }

    /// A plain socket's shutdown at the end of hyper's connection, after the client's last word,
    /// is left to its `close` ([`End::Close`]): the client sees the end once the socket is
    /// dropped, and as a FIN (EOF), not a reset. Without that last word, on TLS and in-memory
    /// streams ([`End::Shutdown`]) and on upgraded connections (whose shutdown is the
    /// application's half-close) it shuts down at once.
    #[tokio::test]
    async fn a_plain_socket_is_ended_by_its_close_and_an_upgraded_one_by_shutdown() {
        use tokio::io::AsyncWriteExt;
        let wd = Watchdog::start(limits(10_000));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (end, last_word, upgraded) in [
            (End::Close, true, false),
            (End::Close, false, false),
            (End::Shutdown, true, false),
            (End::Close, true, true),
        ] {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let (state, _reg) = wd.register();
            state.last_word(last_word);
            let mut io = TrackedIo::new(server, state.clone(), end);
            if upgraded {
                // A `101` written and flushed: the application's stream from now on.
                state.request_started().upgrading(false);
                io.flush().await.unwrap();
                assert!(state.upgraded());
            }
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            io.shutdown().await.unwrap();
            let at_once = end == End::Shutdown || !last_word || upgraded;
            let mut head = [0u8; 38];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut head)
                .await
                .unwrap();
            assert_eq!(
                sees_eof(&mut client).await,
                at_once,
                "{end:?}, last word {last_word}, upgraded {upgraded}"
            );
            drop(io);
            if !at_once {
                assert!(sees_eof(&mut client).await, "no FIN at close");
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_request_body_is_answered_then_its_connection_cut() {
        use crate::body::BodyWatch;
        let wd = Watchdog::start(limits(10_000));
        let (state, reg) = wd.register();
        let _busy = state.request_started();
        let task = tokio::spawn(Guard::new(state.clone(), reg, std::future::pending()));
        // A request waiting for its answer, whose handler waits for the body.
        let told = state.body_stalled();
        tokio::pin!(told);
        state.wait_started();
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), &mut told)
            .await
            .expect("the waiting request was not told");
        assert!(start.elapsed() >= Duration::from_millis(50), "told early");
        // Still stalled at the next sweep (say the response had already started): cut.
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("not cut")
            .unwrap();
    }

    #[tokio::test]
    async fn a_body_waiting_on_its_handler_is_not_stalled() {
        let wd = Watchdog::start(limits(100));
        let (state, _reg) = wd.register();
        let (tx, body) = Body::channel();
        let mut body = TrackedBody::new(body, state.request_started(), None);
        let mut body = Pin::new(&mut body);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(http_body::Body::poll_frame(body.as_mut(), &mut cx).is_pending());
        assert_eq!(
            state.stalled.load(Ordering::Relaxed),
            0,
            "waiting on the handler"
        );
        assert!(tx.send("chunk").await);
        assert!(http_body::Body::poll_frame(body.as_mut(), &mut cx).is_ready());
        assert_eq!(
            state.stalled.load(Ordering::Relaxed),
            1,
            "held for the client"
        );
    }
}
