//! The load harness's HTTP/2 client (`--h2`), written on the `h2` crate because it tells a
//! stream's end apart the way RFC 9113 does: h2c with prior knowledge for `http://` URLs, TLS
//! with ALPN `h2` for `https://` ones (`--ca` names the certificate to trust).
//!
//! **Connections.** `--conns` connections (a [`Pool`] of slots); client `i` sends its requests
//! on slot `i % conns`, one stream at a time, so the streams of all clients are multiplexed on a
//! few connections, as a browser or a gRPC channel does. A slot is (re)connected lazily by the
//! first client that finds it empty.
//!
//! **GOAWAY.** Once a connection has received GOAWAY, h2 refuses new streams on it; the client
//! that finds out empties the slot, so the next request opens a new connection (in the
//! meantime the old one finishes its streams below the GOAWAY's last stream id and closes).
//!
//! **Retries**, only for what the server says it did not process (RFC 9113 §8.7): a stream
//! failed by a GOAWAY that did not cover it (h2 reports `is_go_away() && is_remote()` exactly
//! for streams above the last stream id), and a stream reset with `REFUSED_STREAM`. Those are
//! sent again (on a new connection), counted as `retried_goaway` / `retried_refused`, and are
//! not failures. Anything else — a reset with another code, a connection closed under a stream
//! below the last stream id, a connect or handshake error — is a failure, never retried. A
//! request is retried at most [`MAX_ATTEMPTS`] − 1 times. (A request h2 refuses before sending,
//! because its connection is already going away, is sent on a new connection and not counted:
//! it never left the client.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls_pki_types::pem::PemObject;
use tokio::sync::Mutex;

use crate::{Fail, Failure, Target, connect, failure};

/// Attempts per request (the first and its retries).
const MAX_ATTEMPTS: u32 = 8;

/// Why a stream is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Above a GOAWAY's last stream id.
    GoAway,
    /// Reset with `REFUSED_STREAM`.
    Refused,
}

/// A slot: its connection (a number that names it, and its stream opener), if it has one.
type Slot = Mutex<Option<(u64, SendRequest<Bytes>)>>;

/// The connections the clients share.
pub(crate) struct Pool {
    target: Target,
    uri: http::Uri,
    tls: Option<tokio_rustls::TlsConnector>,
    slots: Vec<Slot>,
    next_id: AtomicU64,
}

/// One request's end, with what it took.
pub(crate) struct Done {
    /// The response's status and the first bytes of its body, or why there is none.
    pub result: Result<(u16, Vec<u8>), Failure>,
    /// Connections it opened.
    pub connects: u64,
    /// Its streams that were sent again, and why.
    pub retries: Vec<Retry>,
}

impl Pool {
    /// `conns` slots for `target`; `ca`: the PEM certificate(s) to trust for `https://`.
    pub(crate) fn new(
        target: Target,
        conns: usize,
        ca: Option<&std::path::Path>,
    ) -> Result<Arc<Pool>, String> {
        let tls = if target.tls {
            let ca = ca.ok_or("an https:// URL needs --ca FILE (the certificate to trust)")?;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        let scheme = if target.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{}{}", target.host_header, target.path)
            .parse()
            .map_err(|e| format!("bad URL: {e}"))?;
        Ok(Arc::new(Pool {
            target,
            uri,
            tls,
            slots: (0..conns.max(1)).map(|_| Mutex::new(None)).collect(),
            next_id: AtomicU64::new(1),
        }))
    }

    /// A new connection: TCP, TLS if asked (ALPN must pick `h2`), the HTTP/2 handshake; its
    /// driver runs in its own task until the server closes it.
    async fn open(&self) -> Result<SendRequest<Bytes>, Failure> {
        let tcp = connect(&self.target).await?;
        let hs = |e: h2::Error| failure(Fail::ConnErr, format!("HTTP/2 handshake: {e}"));
        match &self.tls {
            None => {
                let (send, conn) = h2::client::handshake(tcp).await.map_err(hs)?;
                tokio::spawn(conn);
                Ok(send)
            }
            Some(tls) => {
                let name = rustls_pki_types::ServerName::IpAddress(self.target.addr.ip().into());
                let s = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failure(Fail::ConnErr, format!("TLS handshake: {e}")))?;
                if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(failure(Fail::ConnErr, "ALPN did not choose h2"));
                }
                let (send, conn) = h2::client::handshake(s).await.map_err(hs)?;
                tokio::spawn(conn);
                Ok(send)
            }
        }
    }

    /// Slot `i`'s connection, opened now if it has none (`connects` counts it).
    async fn conn(
        &self,
        i: usize,
        connects: &mut u64,
    ) -> Result<(u64, SendRequest<Bytes>), Failure> {
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let send = self.open().await?;
        *connects += 1;
        let c = (self.next_id.fetch_add(1, Ordering::Relaxed), send);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Empty slot `i` if it still holds connection `id` (it is going away or gone).
    async fn drop_conn(&self, i: usize, id: u64) {
        let mut slot = self.slots[i].lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == id) {
            *slot = None;
        }
    }

    /// One GET on slot `i`'s connection, retried only as the module doc says.
    pub(crate) async fn request(&self, i: usize) -> Done {
        let i = i % self.slots.len();
        let mut done = Done {
            result: Err(failure(Fail::WriteErr, "no attempt")),
            connects: 0,
            retries: Vec::new(),
        };
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let (id, send) = match self.conn(i, &mut done.connects).await {
                Ok(c) => c,
                Err(f) => {
                    done.result = Err(f);
                    return done;
                }
            };
            let mut send = match send.ready().await {
                Ok(s) => s,
                // Going away (GOAWAY received): nothing was sent; a new connection.
                Err(e) if e.is_go_away() && e.is_remote() => {
                    self.drop_conn(i, id).await;
                    continue;
                }
                Err(e) => {
                    self.drop_conn(i, id).await;
                    done.result = Err(failure(Fail::WriteErr, format!("stream not opened: {e}")));
                    return done;
                }
            };
            let req = http::Request::get(self.uri.clone())
                .body(())
                .expect("a valid request");
            let resp = match send.send_request(req, true) {
                Ok((resp, _)) => resp,
                Err(e) if e.is_go_away() && e.is_remote() => {
                    self.drop_conn(i, id).await;
                    continue;
                }
                Err(e) => {
                    self.drop_conn(i, id).await;
                    done.result = Err(failure(Fail::WriteErr, format!("request not sent: {e}")));
                    return done;
                }
            };
            attempts += 1;
            match read(resp).await {
                Ok(r) => {
                    done.result = Ok(r);
                    return done;
                }
                Err(e) => match not_processed(&e) {
                    Some(why) => {
                        if why == Retry::GoAway {
                            self.drop_conn(i, id).await;
                        }
                        done.retries.push(why);
                        done.result = Err(failure(
                            Fail::ReadErr,
                            format!("not processed {MAX_ATTEMPTS} times: {e}"),
                        ));
                    }
                    None => {
                        if e.is_io() || e.is_go_away() {
                            self.drop_conn(i, id).await;
                        }
                        done.result = Err(failure(Fail::ReadErr, format!("stream failed: {e}")));
                        return done;
                    }
                },
            }
        }
        done
    }
}

/// The response head and the body to its end (flow control released as it is read); the
/// status and the body's first bytes.
async fn read(resp: h2::client::ResponseFuture) -> Result<(u16, Vec<u8>), h2::Error> {
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut first = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if first.len() < 256 {
            first.extend_from_slice(&chunk[..chunk.len().min(256 - first.len())]);
        }
    }
    Ok((status, first))
}

/// Whether the server said it did not process the stream (RFC 9113 §8.7), and how.
fn not_processed(e: &h2::Error) -> Option<Retry> {
    if e.is_go_away() && e.is_remote() {
        Some(Retry::GoAway)
    } else if e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Retry::Refused)
    } else {
        None
    }
}
