//! Hosting tower services: the adapter that makes any
//! `tower::Service<http::Request<Body>>` (an `axum::Router`, a tower-http stack, a
//! `tower::service_fn`) a [`Handler`], registered with [`crate::Host::service`].
//!
//! What it does per request, and why:
//! - **Readiness, then call.** tower's contract is that `call` follows a `poll_ready` that
//!   returned `Ready(Ok)` on the same service value. The registered service is cloned for each
//!   request and the clone is polled ready and called (what `tower::ServiceExt::oneshot` and
//!   hyper-util's `TowerToHyperService` do), so requests never wait on each other for a shared
//!   `&mut` service. An `axum::Router` is always ready and its clone is one reference count; a
//!   service that is ready at once is called at once, so the one allocation per request (the
//!   boxed future every handler returns) holds only its future, polled where it was put.
//! - **Bodies.** The request body is apphost's [`Body`], which streams from the connection. The
//!   response body `B` (any `http_body::Body<Data = Bytes>`) is wrapped by [`Body::new`] with no
//!   task and no buffering: the connection polls it as the client takes the data, and an error
//!   it returns cuts the response (HTTP/2 stream reset, HTTP/1 connection closed) and is logged.
//!   An axum `Router`'s body (`axum::body::Body`) is carried as it is, with no box around it.
//! - **Errors.** A service error (from `poll_ready` or from the call) answers `500` with a plain
//!   text body and is logged with the service's name. axum's `Router` is infallible, so this is for
//!   other tower stacks (a `tower::timeout` layer, say).
//! - **Context.** With the route parameter `client_addr: true`, the request carries
//!   [`crate::ClientAddr`] in its extensions (axum: `Extension<ClientAddr>`); without it, and
//!   never [`crate::RouteMatch`], nothing: each extension costs allocations on every request,
//!   and next to axum's own three a fourth makes the map grow (about 2 % of a small axum
//!   request, measured with `bench/axum.sh`). With the route
//!   parameter `strip_prefix: true` the route table has already removed the route's prefix from
//!   the path (see `routes`), so a router written for `/api/...` can be mounted under `/v2/*rest`.

use std::future::{Future, poll_fn, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::StatusCode;
use tower_service::Service;

use crate::body::{Body, BoxError};
use crate::config::{ConfigError, Params};
use crate::handler::{BoxFuture, Factory, Handler, Request, Response, Wants, text};

/// A tower service as a [`Handler`].
pub(crate) struct ServiceHandler<S> {
    svc: S,
    /// The name it was registered under, for the log (made once per [`crate::Host::service`]
    /// and kept for the process's life, so a request's future holds it without a reference
    /// count to touch).
    name: &'static str,
    /// The route's `client_addr`: put a [`crate::ClientAddr`] in the request's extensions.
    client_addr: bool,
}

impl<S, B> Handler for ServiceHandler<S>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request) -> BoxFuture {
        let mut svc = self.svc.clone();
        let name = self.name;
        // Most services are always ready (an axum Router is): asked once here, the call needs no
        // waker. A service that is not ready is asked again inside the future, which then
        // registers the real waker.
        let mut cx = Context::from_waker(Waker::noop());
        match svc.poll_ready(&mut cx) {
            // A struct, not an `async` block: the service's future is polled where it was put
            // (an `async` block moved it into its own state on the first poll, one more copy of
            // a future that is a kilobyte or more for an axum router).
            Poll::Ready(Ok(())) => Box::pin(Answering {
                fut: svc.call(req),
                name,
            }),
            Poll::Ready(Err(e)) => Box::pin(ready(failed(name, e.into()))),
            Poll::Pending => Box::pin(async move {
                if let Err(e) = poll_fn(|cx| svc.poll_ready(cx)).await {
                    return failed(name, e.into());
                }
                answer(name, svc.call(req).await)
            }),
        }
    }

    /// [`Wants::NONE`], unless the route asks for the client's address (`client_addr: true`): a
    /// service has the path itself (with `strip_prefix`, what lies below the route's prefix),
    /// and each extension costs allocations on every request (next to axum's own three, a
    /// fourth also makes the map grow).
    fn wants(&self) -> Wants {
        Wants {
            route_match: false,
            client_addr: self.client_addr,
        }
    }
}

pin_project_lite::pin_project! {
    /// A called service's future, and the name to log its error with.
    struct Answering<F> {
        #[pin]
        fut: F,
        name: &'static str,
    }
}

impl<F, B, E> Future for Answering<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.project();
        let r = std::task::ready!(this.fut.poll(cx));
        Poll::Ready(answer(this.name, r))
    }
}

/// The response, its body wrapped; or `500` for an error.
fn answer<B, E>(service: &str, r: Result<http::Response<B>, E>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    match r {
        Ok(resp) => resp.map(Body::new),
        Err(e) => failed(service, e.into()),
    }
}

/// The `500` answer to a service error, which is logged.
fn failed(service: &str, e: BoxError) -> Response {
    tracing::error!(service, error = %e, "service failed; answered 500");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "500 internal server error\n",
    )
}

/// The factory [`crate::Host::service`] registers: the route's params are checked (a service
/// takes none of its own; `methods` and `strip_prefix` are the route table's) and each route
/// gets its own clone of `svc`.
pub(crate) fn factory<S, B>(name: &str, svc: S) -> Factory
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Once per registration, for the process's life (see `ServiceHandler::name`).
    let name: &'static str = Box::leak(Box::from(name));
    Arc::new(
        move |params: &Params| -> Result<Arc<dyn Handler>, ConfigError> {
            params.deny_unknown(&["client_addr"])?;
            Ok(Arc::new(ServiceHandler {
                svc: svc.clone(),
                name,
                client_addr: params.bool("client_addr")?.unwrap_or(false),
            }))
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
        factory("test", svc)(&Params::empty()).expect("no params")
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

    /// Not ready on the first ask; ready when asked again (counts the asks).
    #[derive(Clone)]
    struct Slow(Arc<std::sync::atomic::AtomicUsize>);

    impl Service<Request> for Slow {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn call(&mut self, req: Request) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::from(req.uri().to_string()))))
        }
    }

    #[tokio::test]
    async fn a_service_that_is_not_ready_is_called_once_it_is() {
        let asks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = handler(Slow(asks.clone()));
        let resp = h.call(http::Request::new(Body::empty())).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(asks.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "/");
    }

    #[test]
    fn client_addr_is_asked_for_by_the_route() {
        let f = factory("test", Slow(Default::default()));
        assert_eq!(f(&Params::empty()).ok().unwrap().wants(), Wants::NONE);
        let p = Params::parse("client_addr: true", crate::config::Format::Yaml).unwrap();
        let w = f(&p).ok().unwrap().wants();
        assert!(w.client_addr && !w.route_match);
        let p = Params::parse("client_addr: 3", crate::config::Format::Yaml).unwrap();
        let err = f(&p).err().unwrap();
        assert!(err.to_string().contains("client_addr"), "{err}");
    }

    #[test]
    fn a_service_route_takes_no_params_of_its_own() {
        let p = Params::parse("colour: red", crate::config::Format::Yaml).unwrap();
        let f = factory(
            "test",
            Fn(|_req: Request| async { Ok::<_, Infallible>(http::Response::new(Body::empty())) }),
        );
        let err = f(&p).err().expect("unknown key rejected");
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
