//! The demo gRPC service's messages, method paths and client, written by hand on prost's derive
//! and tonic's generic client (`tonic::client::Grpc`), so no `.proto` compiler is needed. It is
//! what `tonic-build` would generate from:
//!
//! ```proto
//! syntax = "proto3";
//! package demo;
//! service Demo {
//!   rpc Hello(HelloRequest) returns (HelloReply);          // unary
//!   rpc Count(CountRequest) returns (stream CountReply);   // server streaming
//! }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; uint32 pid = 2; }
//! message CountRequest { uint32 n = 1; uint32 interval_ms = 2; uint32 fail_at = 3; }
//! message CountReply { uint32 i = 1; uint32 pid = 2; }
//! ```
//!
//! Shared by the example (`grpc_app`: the server, and its `load` client) and the integration
//! test (`tests/it/grpc.rs`, through `#[path]`).

// Each user takes what it needs.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use tokio::sync::Mutex;
use tonic_prost::ProstCodec;

/// `Hello`'s path.
pub const HELLO: &str = "/demo.Demo/Hello";
/// `Count`'s path.
pub const COUNT: &str = "/demo.Demo/Count";

/// `Hello`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `Hello`'s reply: a greeting and the pid of the worker that answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

/// `Count`'s request: `n` replies, `interval_ms` apart; with `fail_at` > 0, the stream ends
/// with `OUT_OF_RANGE` instead of reply number `fail_at` (a status in the trailers, after
/// messages).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub n: u32,
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
    #[prost(uint32, tag = "3")]
    pub fail_at: u32,
}

/// One of `Count`'s replies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub i: u32,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

/// Calls sent again by [`Transport`]'s transparent retry, in this process.
static RETRIED: AtomicU64 = AtomicU64::new(0);

/// How many calls [`Transport`] has sent again so far (in this process).
pub fn retried() -> u64 {
    RETRIED.load(Ordering::Relaxed)
}

/// What the client runs on: one HTTP/2 connection (h2c with prior knowledge) on the `h2` crate,
/// replaced by a new one once it has received GOAWAY, with gRPC's *transparent retry*
/// (gRFC A6): a call the server did not process — its stream above a GOAWAY's last stream id,
/// or refused with `REFUSED_STREAM` (RFC 9113 §8.7), which h2 reports exactly — is sent again
/// on a new connection, up to 4 times. Nothing else is retried: a call the server may have
/// started is never sent twice. The request body is buffered to be sent again (this demo's
/// calls send one message).
///
/// Why not tonic's own `Channel`, or hyper's client under it: across apphost's restarts, about
/// 1 % of calls failed on hyper-util's HTTP/2 pool (15 of 1,280 in `tests/it/grpc.rs`' load
/// test), and they cannot all be retried safely from what hyper reports: streams refused by
/// GOAWAY come back as "connection error received: not a result of an error" (which hyper also
/// returns, in a race, for a stream it had sent), requests queued when the connection went away
/// as `Canceled`, and a few as a stream closed by a broken pipe. grpc-go and grpc-java retry the
/// unprocessed ones by themselves; tonic does not.
#[derive(Clone)]
pub struct Transport {
    addr: String,
    conn: Arc<Mutex<Option<Conn>>>,
    next: Arc<AtomicU64>,
    retry: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection: a number naming it, and its stream opener.
type Conn = (u64, SendRequest<Bytes>);

impl Transport {
    fn new(addr: &str, retry: bool) -> Transport {
        Transport {
            addr: addr.to_string(),
            conn: Arc::new(Mutex::new(None)),
            next: Arc::new(AtomicU64::new(1)),
            retry,
        }
    }

    /// The connection, opened now if there is none.
    async fn conn(&self) -> Result<Conn, BoxError> {
        let mut c = self.conn.lock().await;
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        let new = (self.next.fetch_add(1, Ordering::Relaxed), send);
        *c = Some(new.clone());
        Ok(new)
    }

    /// Forget connection `id` (it is going away).
    async fn forget(&self, id: u64) {
        let mut c = self.conn.lock().await;
        if c.as_ref().is_some_and(|(i, _)| *i == id) {
            *c = None;
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<H2Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let mut sent = 0;
            loop {
                let (id, send) = this.conn().await?;
                // A connection that has received GOAWAY opens no stream: nothing was sent.
                let mut send = match send.ready().await {
                    Ok(s) => s,
                    Err(e) if e.is_go_away() && e.is_remote() => {
                        this.forget(id).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut r = http::Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone());
                if let Some(h) = r.headers_mut() {
                    *h = parts.headers.clone();
                }
                let (resp, mut stream) = match send.send_request(r.body(())?, body.is_empty()) {
                    Ok(x) => x,
                    Err(e) if e.is_go_away() && e.is_remote() => {
                        this.forget(id).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if !body.is_empty() {
                    stream.send_data(body.clone(), true)?;
                }
                sent += 1;
                match resp.await {
                    Ok(resp) => {
                        return Ok(resp.map(|recv| H2Body {
                            recv,
                            data_done: false,
                            done: false,
                        }));
                    }
                    Err(e) if this.retry && sent < 5 && not_processed(&e) => {
                        if e.is_go_away() {
                            this.forget(id).await;
                        }
                        RETRIED.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }
}

/// Whether the server said it did not process the stream (RFC 9113 §8.7).
fn not_processed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote())
        || (e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A response body read from an h2 stream: its data (flow-control capacity released as it is
/// read), then its trailers, where gRPC puts the call's status.
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(b)) => {
                    let _ = this.recv.flow_control().release_capacity(b.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        this.done = true;
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

/// A `Demo` client on `Transport`, for `http://ADDR`.
#[derive(Clone)]
pub struct DemoClient {
    grpc: tonic::client::Grpc<Transport>,
}

impl DemoClient {
    /// A client for the server at `addr` (`127.0.0.1:PORT`), with the transparent retry;
    /// connects on first use.
    pub fn new(addr: &str) -> DemoClient {
        Self::with_retry(addr, true)
    }

    /// The same, with or without the transparent retry (see [`Transport`]).
    pub fn with_retry(addr: &str, retry: bool) -> DemoClient {
        let transport = Transport::new(addr, retry);
        let origin = format!("http://{addr}").parse().expect("a valid address");
        DemoClient {
            grpc: tonic::client::Grpc::with_origin(transport, origin),
        }
    }

    async fn ready(&mut self) -> Result<(), tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))
    }

    /// `Hello(name)`.
    pub async fn hello(&mut self, name: &str) -> Result<HelloReply, tonic::Status> {
        self.ready().await?;
        let req = tonic::Request::new(HelloRequest { name: name.into() });
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        let path = PathAndQuery::from_static(HELLO);
        Ok(self.grpc.unary(req, path, codec).await?.into_inner())
    }

    /// `Count(req)`: the stream of replies.
    pub async fn count(
        &mut self,
        req: CountRequest,
    ) -> Result<tonic::Streaming<CountReply>, tonic::Status> {
        self.ready().await?;
        let codec = ProstCodec::<CountRequest, CountReply>::default();
        let path = PathAndQuery::from_static(COUNT);
        let resp = self
            .grpc
            .server_streaming(tonic::Request::new(req), path, codec)
            .await?;
        Ok(resp.into_inner())
    }
}
