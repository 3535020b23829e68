//! Serving: accept loops, connections and the drain of one generation.
//!
//! - [`listen`]: bind a listening socket for a config address, or adopt one handed in.
//! - [`tls`]: rustls server config and the certificate store (swappable for renewal).
//! - [`conn`]: one connection: HTTP/1.1 or HTTP/2 via hyper-util, and how it drains.
//!
//! A generation's servers share one [`Serving`]: it counts live connections and carries the
//! drain signal. Draining works like this:
//! 1. every accept loop stops and drops its listener (the supervisor and the next generation still
//!    hold the socket, so nothing is refused);
//! 2. HTTP/2 connections get GOAWAY at once (clients retry unstarted streams elsewhere);
//! 3. HTTP/1 connections are *not* closed while idle right away: a keep-alive client may already
//!    be sending its next request, and closing then loses it (the race nginx loses on reload).
//!    Instead every response finished from now on carries `Connection: close`, and a connection
//!    that stays idle for `keepalive_grace` is closed after that;
//! 4. when every connection is gone, or `shutdown_timeout` passes, the generation exits.

pub mod conn;
pub mod listen;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::routes::RouteTable;

/// Set once this process's generation starts draining (a worker process serves one generation).
static PROCESS_DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this process's generation has started draining.
pub fn process_draining() -> bool {
    PROCESS_DRAINING.load(Ordering::Relaxed)
}

/// Shared by all connections of one generation.
#[derive(Debug)]
pub struct Serving {
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
    tracker: TaskTracker,
    /// How long an idle HTTP/1 keep-alive connection is kept after the drain starts.
    pub keepalive_grace: Duration,
    /// Request headers (and the TLS handshake) must arrive within this.
    pub header_read_timeout: Duration,
    /// hyper-util builders for plain (auto), HTTP/1-only and HTTP/2-only connections.
    builders: [hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>; 3],
}

impl Serving {
    /// A new, not draining, state.
    pub fn new(keepalive_grace: Duration, header_read_timeout: Duration) -> Arc<Serving> {
        Arc::new(Serving {
            draining: AtomicBool::new(false),
            drain_tx: watch::Sender::new(false),
            tracker: TaskTracker::new(),
            keepalive_grace,
            header_read_timeout,
            builders: [
                conn::builder(conn::Proto::Auto, header_read_timeout),
                conn::builder(conn::Proto::Http1, header_read_timeout),
                conn::builder(conn::Proto::Http2, header_read_timeout),
            ],
        })
    }

    fn builder(
        &self,
        proto: conn::Proto,
    ) -> &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        match proto {
            conn::Proto::Auto => &self.builders[0],
            conn::Proto::Http1 => &self.builders[1],
            conn::Proto::Http2 => &self.builders[2],
        }
    }

    /// True once the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start draining: accept loops stop, connections wind down.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        PROCESS_DRAINING.store(true, Ordering::Relaxed);
        self.drain_tx.send_replace(true);
        self.tracker.close();
    }

    /// Resolves when the drain has started.
    pub async fn drained_signal(&self) {
        let mut rx = self.drain_tx.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves when the drain has started and every connection has finished.
    pub async fn wait_idle(&self) {
        self.drained_signal().await;
        self.tracker.wait().await;
    }
}

/// What a listener serves: its server's routes, and TLS if it is an HTTPS listener.
#[derive(Clone)]
pub struct Endpoint {
    /// The listener key, for logs.
    pub key: String,
    /// The server's name.
    pub server: String,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// TLS, for HTTPS listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accept connections on `listener` until the drain starts, then drop the listener.
pub async fn accept_loop(listener: TcpListener, endpoint: Endpoint, serving: Arc<Serving>) {
    let endpoint = Arc::new(endpoint);
    let mut drain = serving.drain_tx.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let ep = endpoint.clone();
                let s = serving.clone();
                serving.tracker.spawn(conn::serve(stream, peer, ep, s));
            }
            Err(e) => {
                // EMFILE/ENFILE/ECONNABORTED: keep the listener, back off briefly.
                tracing::warn!(listener = %endpoint.key, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!(listener = %endpoint.key, "stopped accepting");
}
