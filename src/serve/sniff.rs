//! A plain connection's protocol, chosen from its first bytes: HTTP/2 with prior knowledge
//! (h2c) starts with the preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, anything else is HTTP/1.1.
//!
//! The first bytes are read (not peeked) into a buffer, and [`Rewind`] gives them back to the
//! chosen hyper connection's first read: one `recv` for a first request that arrives in one
//! segment, where a `recv(MSG_PEEK)` followed by hyper's own read took two. Once given back, the
//! bytes are freed and every read goes straight to the socket (one test of an empty option per
//! read).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::conn::Proto;

/// HTTP/2 with prior knowledge (h2c) starts with this preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much the first read takes: a usual request head fits; a longer one is read on by hyper.
const FIRST_READ: usize = 1024;

/// Read `stream`'s first bytes and choose its protocol; the stream comes back wrapped so that
/// those bytes are read again. `None` when the client closed or the socket failed before
/// sending anything. A client whose first segment is a strict prefix of the preface (rare) gets
/// [`Proto::Auto`]: hyper-util's auto connection, which reads on until it can tell.
pub(crate) async fn first_bytes<S: AsyncRead + Unpin>(mut stream: S) -> Option<(Proto, Rewind<S>)> {
    let mut buf = [0u8; FIRST_READ];
    let n = loop {
        match stream.read(&mut buf).await {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    };
    if n == 0 {
        return None;
    }
    let head = &buf[..n.min(H2_PREFACE.len())];
    let proto = if head != &H2_PREFACE[..head.len()] {
        Proto::Http1
    } else if head.len() == H2_PREFACE.len() {
        Proto::Http2
    } else {
        Proto::Auto
    };
    let prefix = Some(Box::<[u8]>::from(&buf[..n]));
    Some((
        proto,
        Rewind {
            prefix,
            taken: 0,
            stream,
        },
    ))
}

/// A stream whose first bytes were read already: reads return them first, then read the stream.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    /// The bytes read ahead (`None` once all are given back).
    prefix: Option<Box<[u8]>>,
    /// How many of them are given back.
    taken: usize,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = &this.prefix {
            let rest = &prefix[this.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.taken += n;
            if this.taken == prefix.len() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `first_bytes` chooses for a client that sends `sent`, and everything read back
    /// through the wrapper (the client then closes).
    async fn choose(sent: &[u8]) -> Option<(Proto, Vec<u8>)> {
        let (mut client, server) = tokio::io::duplex(64);
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            // Keep the client's end until the server has read everything.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let (proto, mut rewound) = first_bytes(server).await?;
        let mut all = Vec::new();
        // Small reads, so the bytes read ahead are given back over several reads.
        let mut chunk = [0u8; 7];
        loop {
            let n = rewound.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
        }
        drop(rewound);
        writer.await.unwrap();
        Some((proto, all))
    }

    #[tokio::test]
    async fn http1_is_chosen_and_every_byte_is_read_again() {
        // Longer than the duplex's 64-byte buffer: the first read gets part of it.
        let req = b"GET /a/rather/long/path/to/make/this/longer/than/one/read HTTP/1.1\r\nHost: x\r\n\r\n";
        let (proto, all) = choose(req).await.unwrap();
        assert_eq!(proto, Proto::Http1);
        assert_eq!(all, req);
    }

    #[tokio::test]
    async fn the_h2_preface_chooses_http2() {
        let mut sent = H2_PREFACE.to_vec();
        sent.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let (proto, all) = choose(&sent).await.unwrap();
        assert_eq!(proto, Proto::Http2);
        assert_eq!(all, sent);
    }

    #[tokio::test]
    async fn a_prefix_of_the_preface_leaves_the_choice_to_the_auto_connection() {
        let (proto, all) = choose(b"PRI * HT").await.unwrap();
        assert_eq!(proto, Proto::Auto);
        assert_eq!(all, b"PRI * HT");
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_not_served() {
        assert!(choose(b"").await.is_none());
    }
}
