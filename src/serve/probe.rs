//! The readiness request (`readiness: { path, timeout }`): before a new generation reports
//! ready, it sends one `GET` through its own serving path, over an in-memory connection served by
//! the same code as an accepted one (`conn`), so the answer comes from this generation's routes
//! and handlers, never from the old generation that still accepts on the shared listeners.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::conn::{Proto, serve_io};
use super::progress::End;
use super::watchdog::Guard;
use super::{Endpoint, Serving};
use crate::handler::{ClientAddr, Peer};

/// How much of a failed answer's body is kept for the report.
const BODY_START: usize = 512;

/// Why a readiness request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// A non-2xx answer: its status and the start of its body.
    #[error("readiness request GET {path} answered {status}: {body:?}")]
    Status {
        /// The path asked.
        path: String,
        /// The status.
        status: http::StatusCode,
        /// The start of the body (lossy UTF-8, at most 512 bytes).
        body: String,
    },
    /// No answer within the timeout.
    #[error("readiness request GET {path} did not answer within {timeout}")]
    Timeout {
        /// The path asked.
        path: String,
        /// The timeout, as configured.
        timeout: String,
    },
    /// The request could not be made.
    #[error("readiness request GET {path} failed: {why}")]
    Failed {
        /// The path asked.
        path: String,
        /// Why.
        why: String,
    },
}

/// Send `GET path` through `ep`'s routes (as generation `serving`) and wait for a whole 2xx
/// answer, within `timeout`.
pub(crate) async fn probe(
    ep: Arc<Endpoint>,
    serving: Arc<Serving>,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, ask(ep, serving, path)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout {
            path: path.to_string(),
            timeout: crate::config::duration::format_duration(timeout),
        }),
    }
}

async fn ask(ep: Arc<Endpoint>, serving: Arc<Serving>, path: &str) -> Result<(), ProbeError> {
    let failed = |why: String| ProbeError::Failed {
        path: path.to_string(),
        why,
    };
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (state, reg) = serving.watchdog.register();
    let peer = Peer::direct(ClientAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
    let conn = serve_io(
        server,
        peer,
        Proto::Http1,
        End::Shutdown,
        ep,
        serving,
        state.clone(),
    );
    tokio::spawn(Guard::new(state, reg, conn));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header("user-agent", "apphost-readiness")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = resp.status();
    // The whole answer counts, within the timeout: a handler that sends its head at once and
    // then hangs has not answered. The start of the body is kept for a report.
    let mut body = resp.into_body();
    let mut start = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failed(e.to_string()))?;
        if let Ok(data) = frame.into_data()
            && start.len() < BODY_START
        {
            start.extend_from_slice(&data);
        }
    }
    if status.is_success() {
        return Ok(());
    }
    start.truncate(BODY_START);
    Err(ProbeError::Status {
        path: path.to_string(),
        status,
        body: String::from_utf8_lossy(&start).into_owned(),
    })
}
