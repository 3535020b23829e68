//! Handlers: what a route runs. Registered by name on the [`crate::Host`], looked up by the
//! route table when a config names them.
//!
//! A handler is anything implementing [`Handler`]: an async function from a [`Request`] to a
//! [`Response`]. A route's extra config keys (`"/sleep": { handler: sleep, duration: 10s }`)
//! reach the handler in one of two ways:
//! - [`crate::Host::handler`] takes `async fn(Request, Arc<Params>) -> Response`; the params are
//!   passed on every call and read at request time;
//! - [`crate::Host::handler_factory`] takes `fn(&Params) -> Result<impl Handler, ConfigError>`,
//!   called once when the config is loaded, so bad params are config errors with file, line and
//!   column (the built-ins work this way).
//!
//! What the route matched is in the request's extensions as [`RouteMatch`], and the client's
//! address as [`ClientAddr`] (unless the handler's [`Handler::wants`] says it reads neither).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::ALLOW;
use http::{HeaderValue, StatusCode};

use crate::body::Body;
use crate::config::{ConfigError, Params};

/// The request a handler receives. Its body streams from the connection (see [`Body`]); in a
/// test, build one with `http::Request::new(Body::from(…))` or `http::Request::builder()`.
pub type Request = http::Request<Body>;
/// The response a handler returns.
pub type Response = http::Response<Body>;
/// A boxed response future.
pub type BoxFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn call(&self, req: Request) -> BoxFuture;

    /// What this handler reads from the request's extensions. The router inserts only that:
    /// each insert costs allocations on every request (the extension map and its entry), which
    /// is a measurable share of a small handler's cost. The default is everything; a handler
    /// that reads neither [`RouteMatch`] nor [`ClientAddr`] can return [`Wants::NONE`].
    fn wants(&self) -> Wants {
        Wants::ALL
    }
}

/// Which per-request context a [`Handler`] reads from the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Insert a [`RouteMatch`].
    pub route_match: bool,
    /// Insert a [`ClientAddr`].
    pub client_addr: bool,
}

impl Wants {
    /// Both [`RouteMatch`] and [`ClientAddr`].
    pub const ALL: Wants = Wants {
        route_match: true,
        client_addr: true,
    };
    /// Neither.
    pub const NONE: Wants = Wants {
        route_match: false,
        client_addr: false,
    };
}

/// Builds a handler from a route's params, once, at config load.
pub(crate) type Factory =
    Arc<dyn Fn(&Params) -> Result<Arc<dyn Handler>, ConfigError> + Send + Sync>;

/// Set in the request extensions by the router.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route pattern as written in the config (`/files/*path`).
    pub pattern: Arc<str>,
    /// For a wildcard route, what the wildcard matched (without a leading `/`), else `None`.
    pub rest: Option<String>,
}

/// The client's address, set in every request's extensions by the connection: the TCP peer;
/// on a server with `proxy_protocol: true`, the source address the PROXY header names (the
/// client of the proxy in front); for a client on a Unix-domain socket (without a PROXY header
/// naming an IP source), [`ClientAddr::UNIX`]: `127.0.0.1` port 0, a process on this machine
/// (port 0 never comes from a TCP peer, so it tells the two apart).
///
/// ```
/// fn peer(req: &apphost::Request) -> Option<std::net::SocketAddr> {
///     req.extensions().get::<apphost::ClientAddr>().map(|c| c.0)
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// What a client on a Unix-domain socket is given: `127.0.0.1:0`.
    pub const UNIX: ClientAddr = ClientAddr(SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        0,
    )));
}

/// Who a connection serves: the [`ClientAddr`] handlers see and, when a PROXY header named it,
/// the address the connection really came from (the proxy's). Decisions about trust (the admin
/// routes' loopback check) use the real one: see [`real_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// What handlers see.
    pub(crate) client: ClientAddr,
    /// The connection's own peer, when `client` came from a PROXY header.
    pub(crate) proxied_by: Option<SocketAddr>,
}

impl Peer {
    /// A connection whose client is its own peer.
    pub(crate) fn direct(addr: ClientAddr) -> Peer {
        Peer {
            client: addr,
            proxied_by: None,
        }
    }
}

/// In a request's extensions when its [`ClientAddr`] came from a PROXY header: the address the
/// connection really came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxiedBy(pub(crate) SocketAddr);

/// The address a request's connection really came from, whatever a PROXY header claimed: the
/// one to trust for "is this client on this machine". `None` when the router put no
/// [`ClientAddr`] in (a handler that does not [want](Handler::wants) it).
pub(crate) fn real_peer(req: &Request) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ProxiedBy>()
        .map(|p| p.0)
        .or_else(|| ext.get::<ClientAddr>().map(|c| c.0))
}

/// Adapts an `async fn(Request) -> Response` closure into a [`Handler`].
pub struct FnHandler<F>(pub F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn call(&self, req: Request) -> BoxFuture {
        Box::pin((self.0)(req))
    }
}

/// A plain-text response with the given status.
pub fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = http::Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The body of the `404` answer when no route matches.
pub(crate) const NOT_FOUND_BODY: &str = "404 page not found\n";
/// The body of the `405` answer when a route does not allow the request's method.
pub(crate) const METHOD_NOT_ALLOWED_BODY: &str = "405 method not allowed\n";

/// The `404` answer.
pub(crate) fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, NOT_FOUND_BODY)
}

/// A `405` answer with the given `Allow` value.
pub(crate) fn method_not_allowed(allow: HeaderValue) -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED_BODY);
    r.headers_mut().insert(ALLOW, allow);
    r
}

/// A check an application runs in each new generation before it reports ready (see
/// [`crate::Host::on_start`]); an error fails the start (a restart is rolled back) with its text.
pub(crate) type StartCheck = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> + Send + Sync,
>;

/// What an application brings: handler names → factories, and its start-up checks.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
    start_checks: Vec<StartCheck>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// The factory registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Factory> {
        self.factories.get(name)
    }

    /// Register (or replace) a factory.
    pub fn insert(&mut self, name: impl Into<String>, factory: Factory) {
        self.factories.insert(name.into(), factory);
    }

    /// Add a start-up check (run in order, each generation, before it reports ready).
    pub(crate) fn add_start_check(&mut self, check: StartCheck) {
        self.start_checks.push(check);
    }

    /// Run the start-up checks in order; the first error, as text.
    pub(crate) async fn run_start_checks(&self) -> Result<(), String> {
        for check in &self.start_checks {
            check().await?;
        }
        Ok(())
    }
}
