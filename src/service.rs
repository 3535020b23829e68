//! Hosting tower services: the adapter that makes any
//! `tower::Service<http::Request<Body>>` (an `axum::Router`, a tower-http stack, a
//! `tower::service_fn`) a [`Handler`], registered with [`crate::Host::service`].
//!
//! What it does per request, and why:
//! - **Readiness, then call.** tower's contract is that `call` follows a `poll_ready` that
//!   returned `Ready(Ok)` on the same service value. The registered service is cloned for each
//!   request and the clone is polled ready and called (what `tower::ServiceExt::oneshot` and
//!   hyper-util's `TowerToHyperService` do), so requests never wait on each other for a shared
//!   `&mut` service. An `axum::Router` is always ready and its clone is one reference count.
//! - **Bodies.** The request body is apphost's [`Body`], which streams from the connection. The
//!   response body `B` (any `http_body::Body<Data = Bytes>`) is wrapped by [`Body::new`] with no
//!   task and no buffering: the connection polls it as the client takes the data, and an error
//!   it returns cuts the response (HTTP/2 stream reset, HTTP/1 connection closed) and is logged.
//! - **Errors.** A service error (from `poll_ready` or from the call) answers `500` with a plain
//!   text body and is logged with the route. axum's `Router` is infallible, so this is for
//!   other tower stacks (a `tower::timeout` layer, say).
//! - **Context.** Like any handler, the request carries [`crate::RouteMatch`] and
//!   [`crate::ClientAddr`] in its extensions (axum: `Extension<ClientAddr>`). With the route
//!   parameter `strip_prefix: true` the route table has already removed the route's prefix from
//!   the path (see `routes`), so a router written for `/api/...` can be mounted under `/v2/*rest`.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tower_service::Service;

use crate::body::{Body, BoxError};
use crate::config::{ConfigError, Params};
use crate::handler::{BoxFuture, Factory, Handler, Request, Response, RouteMatch, Wants, text};

/// A tower service as a [`Handler`].
pub(crate) struct ServiceHandler<S>(S);

impl<S, B> Handler for ServiceHandler<S>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request) -> BoxFuture {
        let mut svc = self.0.clone();
        // For the log, should the service fail.
        let pattern = req
            .extensions()
            .get::<RouteMatch>()
            .map(|m| m.pattern.clone());
        Box::pin(async move {
            if let Err(e) = poll_fn(|cx| svc.poll_ready(cx)).await {
                return failed(&pattern, e.into());
            }
            match svc.call(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => failed(&pattern, e.into()),
            }
        })
    }

    fn wants(&self) -> Wants {
        Wants::ALL
    }
}

/// The `500` answer to a service error, which is logged.
fn failed(pattern: &Option<Arc<str>>, e: BoxError) -> Response {
    let route = pattern.as_deref().unwrap_or("-");
    tracing::error!(route, error = %e, "service failed; answered 500");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "500 internal server error\n",
    )
}

/// The factory [`crate::Host::service`] registers: the route's params are checked (a service
/// takes none of its own; `methods` and `strip_prefix` are the route table's) and each route
/// gets its own clone of `svc`.
pub(crate) fn factory<S, B>(svc: S) -> Factory
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Arc::new(
        move |params: &Params| -> Result<Arc<dyn Handler>, ConfigError> {
            params.deny_unknown(&[])?;
            Ok(Arc::new(ServiceHandler(svc.clone())))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::Frame;
    use http_body_util::BodyExt;

    use super::*;

    /// A service from a closure (what `tower::service_fn` is, without the dependency).
    #[derive(Clone)]
    struct Fn<F>(F);

    impl<F, Fut, R, E> Service<Request> for Fn<F>
    where
        F: FnMut(Request) -> Fut,
        Fut: Future<Output = Result<R, E>>,
    {
        type Response = R;
        type Error = E;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request) -> Fut {
            (self.0)(req)
        }
    }

    fn handler<S, B>(svc: S) -> Arc<dyn Handler>
    where
        S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        factory(svc)(&Params::empty()).expect("no params")
    }

    #[tokio::test]
    async fn a_service_reads_the_request_body_and_its_response_streams_back() {
        // Echo: the response body is the request body itself, never collected.
        let h = handler(Fn(|req: Request| async move {
            Ok::<_, Infallible>(http::Response::new(req.into_body()))
        }));
        let req = http::Request::post("/echo")
            .body(Body::from(vec![7u8; 100_000]))
            .unwrap();
        let resp = h.call(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, vec![7u8; 100_000]);
    }

    #[tokio::test]
    async fn a_service_error_answers_500() {
        let h = handler(Fn(|_req: Request| async {
            Err::<http::Response<Body>, _>(std::io::Error::other("database down"))
        }));
        let resp = h.call(http::Request::new(Body::empty())).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Not ready: `poll_ready` fails.
    #[derive(Clone)]
    struct Overloaded;

    impl Service<Request> for Overloaded {
        type Response = http::Response<Body>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<http::Response<Body>, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
            Poll::Ready(Err(std::io::Error::other("overloaded")))
        }

        fn call(&mut self, _: Request) -> Self::Future {
            unreachable!("called without being ready")
        }
    }

    #[tokio::test]
    async fn a_poll_ready_error_answers_500_without_a_call() {
        let resp = handler(Overloaded)
            .call(http::Request::new(Body::empty()))
            .await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Two chunks, then an error.
    struct Broken(u8);

    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0 += 1;
            Poll::Ready(Some(if self.0 <= 2 {
                Ok(Frame::data(Bytes::from_static(b"chunk ")))
            } else {
                Err(std::io::Error::other("upstream went away"))
            }))
        }
    }

    #[tokio::test]
    async fn a_response_body_error_reaches_the_connection() {
        let h = handler(Fn(|_req: Request| async {
            Ok::<_, Infallible>(http::Response::new(Broken(0)))
        }));
        let mut body = h.call(http::Request::new(Body::empty())).await.into_body();
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await.expect("an error before the end") {
                Ok(f) => got.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"chunk chunk ");
        assert_eq!(err.to_string(), "upstream went away");
    }

    #[test]
    fn a_service_route_takes_no_params_of_its_own() {
        let p = Params::parse("colour: red", crate::config::Format::Yaml).unwrap();
        let f = factory(Fn(|_req: Request| async {
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        }));
        let err = f(&p).err().expect("unknown key rejected");
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
