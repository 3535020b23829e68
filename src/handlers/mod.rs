//! The built-in handlers (`hello`, `pid`, `sleep`, `static`, `health`, `ready`), one file each, and what
//! they share: how a factory validates params, and how methods are answered.
//!
//! Every built-in is built once per route at config load: its factory rejects unknown params
//! (`deny_unknown`), so a misspelt key is a config error with a position. Built-ins ignore the
//! request body and answer `GET` and `HEAD` (`HEAD`: the same headers, no body); other methods
//! get `405` with `Allow: GET, HEAD` — unless the route lists `methods`, in which case the router
//! has already checked the method and the built-in answers whatever it lets through (as `GET`,
//! or as `HEAD` for `HEAD`).

mod file_body;
mod health;
mod hello;
mod pid;
pub(crate) mod ready;
mod sleep;
mod static_files;

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, StatusCode};

use crate::body::Body;
use crate::config::{ConfigError, Params};
use crate::handler::Registry;
use crate::handler::{BoxFuture, Factory, Handler, Request, Response, Wants, text};

use health::Health;
use hello::Hello;
use pid::Pid;
use sleep::Sleep;
use static_files::StaticFiles;

/// Register the built-in handlers' factories in `r`: `health`, `hello`, `pid`, `ready`, `sleep`,
/// `static`. (`ready` here answers from a state nobody sets; a worker registers its own.)
pub(crate) fn register_builtins(r: &mut Registry) {
    r.insert("health", factory(&[], |_| Ok(Health)));
    r.insert("hello", factory(&["text"], Hello::from_params));
    r.insert("pid", factory(&[], |_| Ok(Pid)));
    r.insert(
        "ready",
        ready::factory(ready::Readiness::new(ready::ReadyState::Starting)),
    );
    r.insert("sleep", factory(&["duration"], Sleep::from_params));
    r.insert(
        "static",
        factory(&["dir", "index"], StaticFiles::from_params),
    );
}

/// A built-in's request-time part: answers a request whose method has been accepted.
pub(crate) trait Respond: Send + Sync + 'static {
    /// Answer; `parts.method` is `HEAD` for a head request (answer without a body).
    fn respond(&self, parts: http::request::Parts) -> BoxFuture;

    /// What it reads from the request's extensions (see [`Handler::wants`]); default none.
    fn wants(&self) -> Wants {
        Wants::NONE
    }
}

/// Which methods a built-in accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodPolicy {
    /// `GET` and `HEAD`; anything else is `405`.
    GetHead,
    /// The route lists `methods`; the router enforces them, the handler takes what arrives.
    Router,
}

impl MethodPolicy {
    /// `Router` when the route's params have `methods`, else `GetHead`.
    pub(crate) fn from_params(params: &Params) -> MethodPolicy {
        if params.get("methods").is_some() {
            MethodPolicy::Router
        } else {
            MethodPolicy::GetHead
        }
    }
}

/// A built-in as a [`Handler`]: the method policy in front of its [`Respond`].
pub(crate) struct Builtin<R> {
    inner: R,
    policy: MethodPolicy,
}

impl<R: Respond> Builtin<R> {
    /// Wrap `inner` with `policy`.
    pub(crate) fn new(inner: R, policy: MethodPolicy) -> Builtin<R> {
        Builtin { inner, policy }
    }

    /// Answer a request with any body type (the body is dropped unread).
    pub(crate) fn handle<B>(&self, req: http::Request<B>) -> BoxFuture {
        let (parts, _body) = req.into_parts();
        if self.policy == MethodPolicy::GetHead
            && parts.method != Method::GET
            && parts.method != Method::HEAD
        {
            let allow = HeaderValue::from_static("GET, HEAD");
            return Box::pin(std::future::ready(crate::handler::method_not_allowed(
                allow,
            )));
        }
        self.inner.respond(parts)
    }
}

impl<R: Respond> Handler for Builtin<R> {
    fn call(&self, req: Request) -> BoxFuture {
        self.handle(req)
    }

    fn wants(&self) -> Wants {
        self.inner.wants()
    }
}

/// A factory for a built-in: rejects params other than `keys` (`methods` is always allowed),
/// builds the [`Respond`] part with `build`, and puts the method policy in front.
fn factory<R: Respond>(
    keys: &'static [&'static str],
    build: fn(&Params) -> Result<R, ConfigError>,
) -> Factory {
    Arc::new(move |params: &Params| {
        params.deny_unknown(keys)?;
        let inner = build(params)?;
        let h: Arc<dyn Handler> = Arc::new(Builtin::new(inner, MethodPolicy::from_params(params)));
        Ok(h)
    })
}

/// A `200` plain-text answer with `body`; for `HEAD`, no body but the same `Content-Length`.
pub(crate) fn text_ok(method: &Method, body: Bytes) -> Response {
    if method == Method::HEAD {
        let mut r = text(StatusCode::OK, Body::empty());
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        r
    } else {
        text(StatusCode::OK, body)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the handlers', the route table's and the admin routes' tests: requests built
    //! in process (no server, no socket), body collection, params built by hand.

    use std::path::PathBuf;

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::tree::Value;
    use crate::config::{Node, Pos};

    /// A request with an empty body.
    pub(crate) fn req(method: Method, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("valid test request")
    }

    /// The whole body of a response.
    pub(crate) async fn body(r: Response) -> Bytes {
        r.into_body()
            .collect()
            .await
            .expect("an in-memory body")
            .to_bytes()
    }

    /// A string node.
    pub(crate) fn s(v: &str) -> Node {
        Node {
            value: Value::Str(v.to_string()),
            pos: Pos::new(3, 7),
        }
    }

    /// Params for route `/r` with the given entries, relative paths resolving against `base`.
    pub(crate) fn params(base: PathBuf, entries: Vec<(&str, Node)>) -> Params {
        Params {
            file: Some(PathBuf::from("server.yaml")),
            key_path: "servers.s.routes./r".to_string(),
            pos: Pos::new(2, 5),
            base_dir: base,
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// A handler-like function to send test requests to, in process: no socket, no hyper
    /// connection (a [`Request`] is built directly).
    #[derive(Clone)]
    pub(crate) struct Direct(Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>);

    /// Requests to `f` go through [`fetch`].
    pub(crate) fn direct<F>(f: F) -> Direct
    where
        F: Fn(Request) -> BoxFuture + Send + Sync + 'static,
    {
        Direct(Arc::new(f))
    }

    /// One request to `app`; the response with its whole body.
    pub(crate) async fn fetch(
        app: &Direct,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<Bytes> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = (app.0)(b.body(Body::empty()).expect("valid request")).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        http::Response::from_parts(parts, bytes)
    }

    /// Build a registered built-in from params.
    pub(crate) fn build(name: &str, p: &Params) -> Result<Arc<dyn Handler>, ConfigError> {
        let mut r = Registry::default();
        register_builtins(&mut r);
        let f = r.get(name).expect("registered");
        f(p)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::test_util::*;
    use super::*;

    #[test]
    fn registers_all_builtins() {
        let mut r = Registry::default();
        register_builtins(&mut r);
        let names: Vec<&str> = r.names().collect();
        assert_eq!(
            names,
            ["health", "hello", "pid", "ready", "sleep", "static"]
        );
    }

    #[test]
    fn misspelt_param_is_a_config_error() {
        let p = params(PathBuf::from("/"), vec![("txet", s("x"))]);
        let err = build("hello", &p).err().expect("unknown key rejected");
        assert!(err.to_string().contains("txet"), "{err}");
    }

    #[test]
    fn methods_param_is_accepted_by_every_builtin() {
        for name in ["health", "hello", "pid", "ready", "sleep"] {
            let p = params(PathBuf::from("/"), vec![("methods", s("GET"))]);
            assert!(build(name, &p).is_ok(), "{name}");
        }
    }

    #[tokio::test]
    async fn other_methods_get_405_with_allow() {
        let h = Builtin::new(Health, MethodPolicy::GetHead);
        let r = h.handle(req(Method::POST, "/health")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }

    #[tokio::test]
    async fn router_policy_lets_other_methods_through() {
        let h = Builtin::new(Health, MethodPolicy::Router);
        let r = h.handle(req(Method::POST, "/health")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ok\n");
    }
}
