//! One connection: optional TLS handshake, then HTTP/1.1 or HTTP/2 through hyper-util, then the
//! drain rules described in the [`crate::serve`] module doc.
//!
//! Protocol choice: on TLS, ALPN decides (`h2` or `http/1.1`); on plain TCP, hyper-util's auto
//! builder looks for the HTTP/2 prior-knowledge preface (h2c) and otherwise speaks HTTP/1.1.
//!
//! Every request gets the peer's address (from `accept`) in its extensions as [`ClientAddr`], a
//! `Copy` value: no allocation beyond the extension map the router fills anyway.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Endpoint, Serving};
use crate::handler::ClientAddr;

/// Which HTTP versions a connection may speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proto {
    /// Plain TCP: HTTP/1.1 or h2c prior knowledge.
    Auto,
    Http1,
    Http2,
}

/// Serve one accepted TCP connection to the end.
pub async fn serve(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
) {
    let peer = ClientAddr(peer);
    match &ep.tls {
        None => serve_io(stream, peer, Proto::Auto, ep, serving).await,
        Some(acceptor) => {
            let hs = tokio::time::timeout(serving.header_read_timeout, acceptor.accept(stream));
            // A handshake under way when the drain starts is completed (bounded by the
            // timeout): the client then gets its answer with `Connection: close`.
            let tls = hs.await;
            match tls {
                Ok(Ok(tls)) => {
                    let proto = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Proto::Http2,
                        _ => Proto::Http1,
                    };
                    serve_io(tls, peer, proto, ep, serving).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %ep.key, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(listener = %ep.key, "TLS handshake timed out"),
            }
        }
    }
}

/// The hyper-util builder for a protocol choice; built once per generation (see `Serving`).
pub(crate) fn builder(
    proto: Proto,
    header_read_timeout: std::time::Duration,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    b.http2().timer(TokioTimer::new());
    match proto {
        Proto::Auto => b,
        Proto::Http1 => b.http1_only(),
        Proto::Http2 => b.http2_only(),
    }
}

async fn serve_io<I>(
    io: I,
    peer: ClientAddr,
    proto: Proto,
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set by the service when it sees an HTTP/2 request (plain connections only learn their
    // protocol from the first request).
    let is_h2 = Arc::new(AtomicBool::new(proto == Proto::Http2));
    // Set at the first request: until then the connection is bounded by header_read_timeout
    // (hyper's own header timer only starts with the first byte).
    let seen = Arc::new(AtomicBool::new(false));
    let svc = {
        let routes = ep.routes.clone();
        let is_h2 = is_h2.clone();
        let seen = seen.clone();
        service_fn(move |mut req: crate::Request| {
            seen.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(peer);
            let http1 = req.version() < http::Version::HTTP_2;
            if !http1 {
                is_h2.store(true, Ordering::Relaxed);
            }
            let fut = routes.dispatch(req);
            async move {
                let mut resp = fut.await;
                // Once draining, every HTTP/1 response closes its connection: the client learns
                // it before sending another request, so none is lost. (A process-wide flag: no
                // shared reference count is touched per request.)
                if http1 && super::process_draining() {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let b = serving.builder(proto);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);

    tokio::select! {
        r = conn.as_mut() => { log_end(&ep, r); return; }
        _ = serving.drained_signal() => {}
        // A client that connects and never sends a request is closed.
        _ = first_request_deadline(&seen, serving.header_read_timeout) => return,
    }
    if !is_h2.load(Ordering::Relaxed) {
        // HTTP/1: give a keep-alive client the chance to send the request it may already have
        // on the wire; its response will carry `Connection: close`.
        tokio::select! {
            r = conn.as_mut() => { log_end(&ep, r); return; }
            _ = tokio::time::sleep(serving.keepalive_grace) => {}
        }
    }
    if !seen.load(Ordering::Relaxed) {
        // Never sent a request: nothing to finish.
        return;
    }
    // HTTP/2: GOAWAY now. HTTP/1 idle past the grace: close; busy: finish the response, then close.
    conn.as_mut().graceful_shutdown();
    let r = conn.await;
    log_end(&ep, r);
}

/// Resolves `after` from now if no request has been seen by then; otherwise never.
async fn first_request_deadline(seen: &AtomicBool, after: std::time::Duration) {
    tokio::time::sleep(after).await;
    if seen.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

fn log_end(ep: &Endpoint, r: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = r {
        tracing::debug!(listener = %ep.key, error = %e, "connection ended with an error");
    }
}
