//! Upgraded connections: HTTP/1.1 `Upgrade` (a WebSocket, in practice) and `CONNECT` tunnels
//! handed to the application, counted while it holds them, and closed by the host at
//! `stream_grace` when the application leaves them open during a drain.
//!
//! How a connection becomes the application's: hyper inserts an `OnUpgrade` into the request's
//! extensions when the request asks for an upgrade (axum's `WebSocketUpgrade` takes it from
//! there); the application answers `101 Switching Protocols`; the connection notes that
//! ([`ConnState::upgrading`]); hyper writes the 101 head and flushes it, and hands the I/O (the
//! connection's [`super::progress::TrackedIo`], plus what it had read past the request) to the
//! application. The first flush that completes after the 101 was answered is that hand-over:
//! from then on every byte through the I/O is the application's stream, and `TrackedIo` serves it
//! through [`Stream`] instead of the HTTP write tracking.
//!
//! What applies to an upgraded connection:
//! - it is **in flight**: its connection task stays registered with the watchdog until the
//!   application drops the stream (or the host closes it), so `apphost status` counts it and the
//!   drain waits for it, up to `shutdown_timeout`;
//! - `header_read_timeout`, `idle_timeout`, `keepalive_grace` and `send_timeout` do **not** apply
//!   (they time HTTP exchanges; a WebSocket may be silent for hours, and how long the application
//!   waits on a client that does not read is the application's choice);
//! - the host buffers nothing of the stream: reads and writes go straight to the socket (through
//!   TLS on HTTPS listeners, whose record buffers rustls bounds). What the application buffers is
//!   bounded by its WebSocket library (axum: `WebSocketUpgrade::max_write_buffer_size`,
//!   `max_message_size`; a `send().await` waits while the client does not read, so a client that
//!   never reads holds the kernel's socket buffers and one message, not more);
//! - during a drain, at `stream_grace` (if configured) the host closes it: see below.
//!
//! Closing at `stream_grace`: the sweeper marks the stream closing and wakes the tasks that last
//! read or wrote it. The close is done by the stream itself, in the application's next read,
//! write or flush, so it never races a write of the application's: a WebSocket (the request said
//! `Upgrade: websocket`) gets a close frame with code 1001 ("going away"), written at a frame
//! boundary — the stream follows the frame headers of everything written, and a write under way
//! is let through to the end of its frame first, never further. Then the stream is flushed and
//! shut down (TLS `close_notify`, TCP FIN); the application's reads see the end of the stream
//! and its writes fail, so its handler ends. Another protocol is shut down without a frame. An
//! application that does not touch the stream within [`CLOSE_WAIT`] of being woken (its task is
//! busy elsewhere, or its write is stuck mid-frame because the client does not read) is not
//! waited for: the connection stops counting, and the worker's exit closes the socket.
//!
//! A `CONNECT` (a forward proxy's tunnel) is the same with a 2xx in place of the `101`: hyper
//! writes the head and hands the connection over; it is counted, waited for and closed at
//! `stream_grace` like a WebSocket (shut down, with no frame). The axum example's fallback is
//! such a proxy (to loopback addresses), and `tests/it/websocket.rs` has its restart tests.
//!
//! HTTP/2 has no upgrades (RFC 8441's extended CONNECT is not offered), so WebSockets are
//! HTTP/1.1 only, on plain and TLS listeners alike. An HTTP/2 `CONNECT` is one stream of its
//! connection, not tracked as a tunnel here: once its response is given, the host counts the
//! connection as idle (README, Limits).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::watchdog::ConnState;

/// `ConnState::stream`: a `101` answered an upgrade request; the next completed flush hands the
/// I/O to the application.
pub(super) const UPGRADING: u8 = 1;
/// `ConnState::stream`: the request said `Upgrade: websocket`.
pub(super) const WEBSOCKET: u8 = 2;
/// `ConnState::stream`: the I/O is the application's.
pub(super) const UPGRADED: u8 = 4;
/// `ConnState::stream`: `stream_grace` has passed; the stream closes itself at its next use.
pub(super) const CLOSING: u8 = 8;
/// `ConnState::stream`: the host has closed it (close frame, flush, shutdown done or failed).
pub(super) const CLOSED: u8 = 16;
/// `ConnState::stream`: the application dropped it (or the connection ended).
pub(super) const GONE: u8 = 32;

/// How long after asking an upgraded stream to close the host waits for the application to
/// touch it before the connection stops counting (the worker's exit then closes the socket).
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A WebSocket close frame from a server (unmasked), code 1001 "going away", no reason.
const CLOSE_1001: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// `ConnState::stream_wakers`: the task that last read, and the one that last wrote.
const READER: usize = 0;
const WRITER: usize = 1;

impl ConnState {
    fn stream_flags(&self) -> u8 {
        self.stream.load(Ordering::Acquire)
    }

    fn set_stream(&self, f: u8) {
        self.stream.fetch_or(f, Ordering::AcqRel);
    }

    /// The application answered `101` to an upgrade request (`websocket`: it asked for
    /// `Upgrade: websocket`): hyper hands the connection over once the head is flushed.
    pub(crate) fn upgrading(&self, websocket: bool) {
        self.set_stream(UPGRADING | if websocket { WEBSOCKET } else { 0 });
    }

    /// True once the connection was handed to the application.
    pub(crate) fn upgraded(&self) -> bool {
        self.stream_flags() & UPGRADED != 0
    }

    /// True once an upgraded stream is over for the host: dropped by the application, or closed
    /// by the host.
    pub(crate) fn stream_ended(&self) -> bool {
        self.stream_flags() & (CLOSED | GONE) != 0
    }

    /// The sweeper: `stream_grace` has passed. Mark it and wake the application's tasks.
    pub(super) fn close_stream(&self) {
        self.set_stream(CLOSING);
        self.wake_stream();
    }

    fn keep_waker(&self, which: usize, w: &Waker) {
        let mut ws = self.stream_wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !ws[which].as_ref().is_some_and(|old| old.will_wake(w)) {
            ws[which] = Some(w.clone());
        }
    }

    fn wake_stream(&self) {
        let ws = std::mem::take(&mut *self.stream_wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in ws.into_iter().flatten() {
            w.wake();
        }
    }

    /// The stream is over for the host (`CLOSED` or `GONE`): the connection's task ends, and
    /// any other task of the application parked on the stream gets to see it.
    fn stream_over(&self, f: u8) {
        self.set_stream(f);
        self.wake();
        self.wake_stream();
    }
}

/// What the sweeper does with an upgraded connection.
pub(super) enum Sweep {
    /// Nothing now.
    Leave,
    /// `stream_grace` has passed: ask it to close ([`ConnState::close_stream`]).
    Close,
    /// Asked [`CLOSE_WAIT`] ago and not touched since: stop waiting for it (kill its task).
    GiveUp,
}

/// The sweeper's rules for an upgraded connection (`stream`: its flags) at `now` (ms, as
/// `drain_at`; `tick`: the sweeper's period): no HTTP deadline; during a drain, `stream_grace`.
pub(super) fn sweep(
    s: &ConnState,
    stream: u8,
    drain_at: Option<u64>,
    grace: Option<Duration>,
    now: u64,
    tick: u64,
) -> Sweep {
    let (Some(at), Some(grace)) = (drain_at, grace) else {
        return Sweep::Leave;
    };
    let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
    if stream & (CLOSED | GONE) != 0 {
        Sweep::Leave
    } else if stream & CLOSING == 0 {
        if now.saturating_sub(at) >= ms(grace) {
            Sweep::Close
        } else {
            Sweep::Leave
        }
    } else if now.saturating_sub(s.since_ms.load(Ordering::Acquire)) >= ms(CLOSE_WAIT) + tick {
        tracing::debug!(
            "stream_grace: the application did not touch its upgraded connection; no longer \
             waiting for it"
        );
        Sweep::GiveUp
    } else {
        Sweep::Leave
    }
}

/// If a flush just completed on a connection whose `101` is being sent, the hand-over: the
/// application's stream, from now on.
pub(super) fn handed_over(state: &ConnState) -> Option<Box<Stream>> {
    let f = state.stream_flags();
    if f & (UPGRADING | UPGRADED) != UPGRADING {
        return None;
    }
    state.set_stream(UPGRADED);
    Some(Box::new(Stream {
        websocket: f & WEBSOCKET != 0,
        frames: Frames::default(),
        close: CloseStep::Frame(0),
    }))
}

/// The stream has been dropped by the application (or with its connection).
pub(super) fn dropped(state: &ConnState) {
    state.stream_over(GONE);
}

/// An upgraded connection's stream, as the host watches it (inside `TrackedIo`).
#[derive(Debug)]
pub(crate) struct Stream {
    websocket: bool,
    /// Where the application's output is in its WebSocket frames.
    frames: Frames,
    /// How far the host's close has got.
    close: CloseStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseStep {
    /// Writing the close frame; how many of its bytes are written.
    Frame(usize),
    Flush,
    Shutdown,
    Done,
}

impl Stream {
    /// True when the host may write its close frame now (between two of the application's
    /// frames), or needs none.
    fn may_close(&self) -> bool {
        !self.websocket || self.frames.at_boundary()
    }

    /// Drive the host's close to its end (errors end it too: the socket is gone either way).
    fn poll_close<I>(&mut self, io: &mut I, state: &ConnState, cx: &mut Context<'_>) -> Poll<()>
    where
        I: AsyncWrite + Unpin,
    {
        loop {
            self.close = match self.close {
                CloseStep::Frame(k) if !self.websocket || k == CLOSE_1001.len() => CloseStep::Flush,
                CloseStep::Frame(k) => {
                    match ready!(Pin::new(&mut *io).poll_write(cx, &CLOSE_1001[k..])) {
                        Ok(n) if n > 0 => CloseStep::Frame(k + n),
                        _ => CloseStep::Done,
                    }
                }
                CloseStep::Flush => match ready!(Pin::new(&mut *io).poll_flush(cx)) {
                    Ok(()) => CloseStep::Shutdown,
                    Err(_) => CloseStep::Done,
                },
                CloseStep::Shutdown => {
                    let _ = ready!(Pin::new(&mut *io).poll_shutdown(cx));
                    CloseStep::Done
                }
                CloseStep::Done => {
                    if state.stream_flags() & CLOSED == 0 {
                        tracing::debug!(
                            websocket = self.websocket,
                            "stream_grace: closed an upgraded connection"
                        );
                        state.stream_over(CLOSED);
                    }
                    return Poll::Ready(());
                }
            };
        }
    }
}

fn closing(state: &ConnState) -> bool {
    state.stream_flags() & CLOSING != 0
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the host closed this upgraded connection (stream_grace)",
    )
}

/// A read of the application's stream: the socket's bytes; once closing, the close, then the end
/// of the stream.
pub(super) fn poll_read<I>(
    io: &mut I,
    state: &ConnState,
    s: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    state.keep_waker(READER, cx.waker());
    if closing(state) {
        if !s.may_close() {
            // A frame is half written: its writer finishes it, closes, and wakes this task.
            return Poll::Pending;
        }
        ready!(s.poll_close(io, state, cx));
        return Poll::Ready(Ok(()));
    }
    Pin::new(io).poll_read(cx, buf)
}

/// A write of the application's stream: followed frame by frame; once closing, only the rest of
/// the frame under way, then the close, then an error.
pub(super) fn poll_write<I>(
    io: &mut I,
    state: &ConnState,
    s: &mut Stream,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>>
where
    I: AsyncWrite + Unpin,
{
    state.keep_waker(WRITER, cx.waker());
    let mut limit = buf.len();
    if closing(state) {
        if s.may_close() {
            ready!(s.poll_close(io, state, cx));
            return Poll::Ready(Err(closed_error()));
        }
        limit = limit.min(s.frames.left_in_frame());
    }
    let r = Pin::new(io).poll_write(cx, &buf[..limit]);
    if let (true, Poll::Ready(Ok(n))) = (s.websocket, &r) {
        s.frames.advance(&buf[..*n]);
    }
    r
}

/// A flush of the application's stream; once closing (between frames), the close, then an error.
pub(super) fn poll_flush<I>(
    io: &mut I,
    state: &ConnState,
    s: &mut Stream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>>
where
    I: AsyncWrite + Unpin,
{
    state.keep_waker(WRITER, cx.waker());
    if closing(state) && s.may_close() {
        ready!(s.poll_close(io, state, cx));
        return Poll::Ready(Err(closed_error()));
    }
    Pin::new(io).poll_flush(cx)
}

/// Where a server's output is in its WebSocket frames (RFC 6455 section 5.2): the header bytes
/// of the frame under way, then how much of its payload is still to come.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 14],
    head_len: u8,
    payload_left: u64,
}

impl Frames {
    /// True between two frames.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// How many more bytes belong to the frame under way (its header's, while that is not
    /// complete). Not called at a boundary.
    fn left_in_frame(&self) -> usize {
        if self.payload_left > 0 {
            return usize::try_from(self.payload_left).unwrap_or(usize::MAX);
        }
        usize::from(self.head_need() - self.head_len)
    }

    /// The header's length, as far as its first two bytes tell.
    fn head_need(&self) -> u8 {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// `bytes` were written.
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let k = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= k;
                bytes = &bytes[k as usize..];
                continue;
            }
            self.head[usize::from(self.head_len)] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len >= 2 && self.head_len == self.head_need() {
                let h = &self.head;
                self.payload_left = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.head_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) with `payload`.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_boundaries_are_followed_across_any_split_of_the_writes() {
        let mut out = Vec::new();
        let mut ends = vec![0];
        for p in [&b""[..], b"hello", &[7u8; 300], &[1u8; 70_000], b"x"] {
            out.extend(frame(0x2, p));
            ends.push(out.len());
        }
        for step in [1, 2, 3, 7, 100, 4096, out.len()] {
            let mut f = Frames::default();
            let mut at = 0;
            while at < out.len() {
                // The boundary is known exactly before every write.
                assert_eq!(
                    f.at_boundary(),
                    ends.contains(&at),
                    "at byte {at}, step {step}"
                );
                if !f.at_boundary() {
                    let next_end = *ends.iter().find(|&&e| e > at).unwrap();
                    let left = f.left_in_frame();
                    assert!(at + left <= next_end, "limit past the frame's end at {at}");
                }
                let n = step.min(out.len() - at);
                f.advance(&out[at..at + n]);
                at += n;
            }
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn a_masked_header_and_long_lengths_are_read() {
        let mut f = Frames::default();
        // Masked, 16-bit length 300: header 2 + 2 + 4.
        f.advance(&[0x82, 0x80 | 126, 0x01, 0x2c, 1, 2, 3, 4]);
        assert_eq!(f.left_in_frame(), 300);
        f.advance(&[0; 299]);
        assert_eq!(f.left_in_frame(), 1);
        f.advance(&[0]);
        assert!(f.at_boundary());
        // Half a header: only the rest of the header is let through.
        f.advance(&[0x82, 127, 0, 0]);
        assert_eq!(f.left_in_frame(), 6);
    }
}
