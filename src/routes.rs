//! The route table: which handler answers a request, built once per server from its config.
//!
//! # Matching rules
//! - A pattern is either an **exact path** (`/pid`) or a **wildcard** ending in `/*name` (or a
//!   bare `/*`): `/files/*path` matches `/files`, `/files/` and everything below `/files/`, but
//!   not `/filesx`. `/*rest` matches every path.
//! - An exact route beats a wildcard route; among wildcards the **longest prefix** wins
//!   (`/files/img/*p` over `/files/*p` for `/files/img/a.png`).
//! - Paths are compared as they arrive (still percent-encoded, query excluded); nothing is
//!   normalised. Handlers that map paths to files must check for `..` themselves (`static` does).
//! - No match: `404` with the plain-text body `404 page not found\n`.
//! - A route may list `methods` (a string or a list of strings; written in any case, stored
//!   uppercase; `GET` implies `HEAD`). Any other method gets `405` with an `Allow` header listing
//!   them. Without `methods` every request reaches the handler, which decides for itself (the
//!   built-ins answer `GET` and `HEAD` only).
//!
//! - A wildcard route may set `strip_prefix: true`: the handler then sees the request's path
//!   without the route's prefix (`/v2/*rest` turns `/v2/api/users/3?x=1` into
//!   `/api/users/3?x=1`; `/v2` itself into `/`), so a service written for its own paths (an
//!   `axum::Router`) can be mounted anywhere. Without it the path is passed unchanged. On an
//!   exact route it is a config error.
//!
//! Before the handler runs, the request's extensions get a [`RouteMatch`]: the pattern as written
//! and, for a wildcard, the rest of the path after the prefix, without its leading `/` (still
//! percent-encoded).
//!
//! [`RouteTable::dispatch_from`] is the hot path: an exact match is one hash lookup; a wildcard match
//! is one hash lookup per `/` in the path (only when wildcard routes exist). Neither formats
//! strings; the only allocations are the `RouteMatch` itself (and its `rest` for wildcards).

use std::collections::HashMap;
use std::fmt;
use std::future::ready;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};

use crate::body::Cutoff;
use crate::config::{ConfigError, RoutePattern, ServerConfig};
use crate::fnv::Fnv1a;
use crate::handler::{BoxFuture, Handler, Peer, ProxiedBy, Request, RouteMatch, Wants};
use crate::handler::{Registry, method_not_allowed, not_found, text};
use crate::tally::{RouteTally, ServerTally};
use methods::{Allowed, parse_methods};

/// A server's routes: built from its config by [`RouteTable::build`], extended by the admin
/// module with [`RouteTable::insert`], and used for every request by [`RouteTable::dispatch_from`].
#[derive(Default)]
pub(crate) struct RouteTable {
    /// Exact routes by path.
    exact: PathMap,
    /// Wildcard routes by prefix (the pattern without `/*name`; `""` for `/*name`).
    wildcard: PathMap,
    /// The longest wildcard prefix: no candidate longer than this is looked up.
    wildcard_max: usize,
    /// The catch-all `/*name` (prefix `""`), also in `wildcard`: the last candidate of every
    /// wildcard lookup, taken without hashing (with only `/*rest`, the usual way to mount a whole
    /// service, a lookup hashes nothing).
    catch_all: Option<Arc<Route>>,
    /// Every route, in the order added (for [`RouteTable::patterns`]).
    list: Vec<Arc<Route>>,
    /// Where requests are counted, when the config asks for metrics ([`RouteTable::count_into`]).
    tally: Option<Arc<ServerTally>>,
    /// The server's `max_request_body`, for routes that do not say (and inserted ones).
    default_max_body: Option<u64>,
    /// Some route has a `timeout`.
    has_timeouts: bool,
}

/// Routes by path, hashed with FNV-1a: the keys come from the config and lookups never insert,
/// so SipHash's defence against chosen keys buys nothing here, and it costs more per request.
type PathMap = HashMap<Box<str>, Arc<Route>, BuildHasherDefault<Fnv1a>>;

/// One route.
struct Route {
    /// The pattern.
    spec: RoutePattern,
    /// The pattern as written (shared with every request's [`RouteMatch`]).
    pattern: Arc<str>,
    /// The handler's registered name.
    handler_name: Box<str>,
    handler: Arc<dyn Handler>,
    /// What the handler reads from the request's extensions (asked once, at build).
    wants: Wants,
    /// The allowed methods, if the route restricts them.
    methods: Option<Allowed>,
    /// `strip_prefix: true` (wildcard routes only): the handler sees the path without the
    /// route's prefix.
    strip_prefix: bool,
    /// Its counters, once the table counts ([`RouteTable::count_into`]).
    tally: OnceLock<Arc<RouteTally>>,
    /// The guards on its requests: `timeout`, and `max_request_body` (the route's, else the
    /// server's).
    guards: Guards,
}

/// A route's guards (issue #14; see `serve::guarded` for how they are enforced).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Guards {
    /// `timeout`: how long the handler has to produce its response headers.
    pub(crate) timeout: Option<Duration>,
    /// `max_request_body` in bytes.
    pub(crate) max_body: Option<u64>,
}

/// What a request's route asks of the connection besides the handler's answer: answer for the
/// handler when the `cutoff` trips (its body grew past `max_request_body`, or its `timeout`
/// passed). `cutoff` is `None` (the usual case) when neither applies.
#[derive(Debug, Default)]
pub(crate) struct RequestGuards {
    /// The route's `timeout`.
    pub(crate) timeout: Option<Duration>,
    /// Set when a guard applies to this request.
    pub(crate) cutoff: Option<Arc<Cutoff>>,
    /// The route's `max_request_body`, for the `413`'s text.
    pub(crate) max_body: Option<u64>,
}

/// The outcome of a lookup.
enum Lookup<'t, 'p> {
    /// A route, and for a wildcard the rest of the path (no leading `/`).
    Found {
        route: &'t Route,
        rest: Option<&'p str>,
    },
    /// A route matched but does not allow the method; the route and its `Allow` value.
    MethodNotAllowed(&'t Route, &'t HeaderValue),
    /// No route matched.
    NotFound,
}

impl RouteTable {
    /// An empty table (every request gets `404`).
    pub(crate) fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Build a server's table from its `routes`: each route's handler is looked up in `registry`
    /// by name and its factory called with the route's params (once, here).
    ///
    /// Errors: an unknown handler name, a malformed pattern, two patterns that match the same
    /// paths, an invalid `methods` list, or whatever the handler's factory rejects.
    pub(crate) fn build(
        server: &ServerConfig,
        registry: &Registry,
    ) -> Result<RouteTable, ConfigError> {
        let mut table = RouteTable::new();
        table.default_max_body = server.max_request_body;
        for route in &server.routes {
            let params = &route.params;
            let route_error = |msg: String| {
                ConfigError::new(
                    params.file.as_deref(),
                    Some(params.pos),
                    params.key_path.clone(),
                    msg,
                )
            };
            let map = match route.pattern.wildcard_prefix() {
                None => &table.exact,
                Some(_) => &table.wildcard,
            };
            if let Some(other) = map.get(route.pattern.key()) {
                return Err(route_error(format!(
                    "route {:?} matches the same paths as {:?}",
                    route.pattern.as_str(),
                    other.pattern
                )));
            }
            let factory = registry.get(&route.handler).ok_or_else(|| {
                let names: Vec<&str> = registry.names().collect();
                let registered = if names.is_empty() {
                    "none registered".to_string()
                } else {
                    format!("registered: {}", names.join(", "))
                };
                ConfigError::new(
                    params.file.as_deref(),
                    Some(route.handler_pos),
                    format!("{}.handler", params.key_path),
                    format!("unknown handler {:?} ({registered})", route.handler),
                )
            })?;
            let methods = parse_methods(params)?;
            let strip_prefix = params.bool("strip_prefix")?.unwrap_or(false);
            if strip_prefix && route.pattern.wildcard_prefix().is_none() {
                return Err(params.error(
                    Some("strip_prefix"),
                    format!(
                        "strip_prefix needs a wildcard route (\"/prefix/*name\"); {:?} is an exact path",
                        route.pattern.as_str()
                    ),
                ));
            }
            let guards = Guards {
                timeout: crate::config::guards::route_timeout(params)?,
                max_body: crate::config::guards::route_body_limit(params)?
                    .unwrap_or(server.max_request_body),
            };
            let handler = factory(params)?;
            table.add(
                &route.pattern,
                &route.handler,
                handler,
                methods,
                strip_prefix,
                guards,
            );
        }
        Ok(table)
    }

    /// Add a route, replacing any route that matches the same paths (`/a/*x` and `/a/*y` do).
    ///
    /// Used by the admin module for its routes (exact `/debug/admin`, wildcard
    /// `/debug/admin/*action`). `methods`, when given, restricts the route as a config's
    /// `methods` would (`GET` implies `HEAD`).
    pub(crate) fn insert(
        &mut self,
        pattern: &RoutePattern,
        handler_name: &str,
        handler: Arc<dyn Handler>,
        methods: Option<Vec<Method>>,
    ) {
        let guards = Guards {
            timeout: None,
            max_body: self.default_max_body,
        };
        self.add(pattern, handler_name, handler, methods, false, guards)
    }

    /// [`RouteTable::insert`], with `strip_prefix` (for a wildcard pattern).
    fn add(
        &mut self,
        pattern: &RoutePattern,
        handler_name: &str,
        handler: Arc<dyn Handler>,
        methods: Option<Vec<Method>>,
        strip_prefix: bool,
        guards: Guards,
    ) {
        self.has_timeouts |= guards.timeout.is_some();
        let route = Arc::new(Route {
            spec: pattern.clone(),
            pattern: Arc::from(pattern.as_str()),
            handler_name: Box::from(handler_name),
            wants: handler.wants(),
            handler,
            methods: methods.map(Allowed::new),
            strip_prefix,
            tally: OnceLock::new(),
            guards,
        });
        if let Some(t) = &self.tally {
            let _ = route.tally.set(t.route(&route.pattern));
        }
        let map = match pattern.wildcard_prefix() {
            None => &mut self.exact,
            Some(key) => {
                self.wildcard_max = self.wildcard_max.max(key.len());
                if key.is_empty() {
                    self.catch_all = Some(route.clone());
                }
                &mut self.wildcard
            }
        };
        match map.insert(Box::from(pattern.key()), route.clone()) {
            Some(old) => {
                if let Some(slot) = self.list.iter_mut().find(|r| Arc::ptr_eq(r, &old)) {
                    *slot = route;
                }
            }
            None => self.list.push(route),
        }
    }

    /// Every route's pattern and handler name, in the order added.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = (&RoutePattern, &str)> {
        self.list.iter().map(|r| (&r.spec, &*r.handler_name))
    }

    /// Every route as (pattern, handler name), in the order added.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> Vec<(String, String)> {
        self.list
            .iter()
            .map(|r| (r.pattern.to_string(), r.handler_name.to_string()))
            .collect()
    }

    /// Count this server's requests from now on into `tally`: every route, present and added
    /// later, gets its own counters there, and requests no route matches count as
    /// [`crate::tally::UNMATCHED`].
    pub(crate) fn count_into(&mut self, tally: Arc<ServerTally>) {
        for r in &self.list {
            let _ = r.tally.set(tally.route(&r.pattern));
        }
        self.tally = Some(tally);
    }

    /// True when requests are counted ([`RouteTable::count_into`]).
    #[inline]
    pub(crate) fn counts(&self) -> bool {
        self.tally.is_some()
    }

    /// The index of this table's server among the worker's counted servers (0 when not
    /// counted).
    pub(crate) fn server_index(&self) -> u16 {
        self.tally.as_ref().map_or(0, |t| t.index())
    }

    /// Every route as (pattern, handler name, guards), in the order added (for `check`).
    pub(crate) fn routes_with_guards(&self) -> Vec<(String, String, Guards)> {
        self.list
            .iter()
            .map(|r| (r.pattern.to_string(), r.handler_name.to_string(), r.guards))
            .collect()
    }

    /// True when some route has a `timeout` (the connection then keeps the watchdog's deadline
    /// list at hand).
    pub(crate) fn has_timeouts(&self) -> bool {
        self.has_timeouts
    }

    /// Route one request: `404`, `405`, or the matched handler's answer (with a [`RouteMatch`]
    /// in the request's extensions).
    #[cfg(test)]
    pub(crate) fn dispatch(&self, req: Request) -> BoxFuture {
        self.route(req, None).0
    }

    /// Route one request from `client`: as `RouteTable::dispatch`, and the handler also gets
    /// a [`crate::ClientAddr`] if it [wants](Handler::wants) one.
    /// When a PROXY header named the client, the connection's own peer goes in too (as
    /// `ProxiedBy`, for [`crate::handler::real_peer`]), always together with the client.
    /// Also the tally the request counts in, when the table counts (the matched route's, or the
    /// unmatched one's), and what the route's guards ask of the connection: a request whose
    /// `Content-Length` is over `max_request_body` is answered `413` here, without calling the
    /// handler (HTTP/1: with `Connection: close`, since its body is left unread); a body still to
    /// come is limited ([`Body::limit`](crate::Body)).
    pub(crate) fn dispatch_from(
        &self,
        req: Request,
        client: Peer,
    ) -> (BoxFuture, Option<&Arc<RouteTally>>, RequestGuards) {
        self.route(req, Some(client))
    }

    fn route(
        &self,
        mut req: Request,
        client: Option<Peer>,
    ) -> (BoxFuture, Option<&Arc<RouteTally>>, RequestGuards) {
        let (route, rest, stripped) = match self.lookup(req.method(), req.uri().path()) {
            Lookup::Found { route, rest } => (
                route,
                // Copied only if it is going to be used.
                rest.filter(|_| route.wants.route_match).map(str::to_owned),
                rest.filter(|_| route.strip_prefix)
                    .and_then(|r| strip_prefix(req.uri(), r)),
            ),
            Lookup::MethodNotAllowed(route, allow) => {
                return (
                    Box::pin(ready(method_not_allowed(allow.clone()))),
                    route.tally.get(),
                    RequestGuards::default(),
                );
            }
            Lookup::NotFound => {
                return (
                    Box::pin(ready(not_found())),
                    self.tally.as_ref().map(|t| t.unmatched()),
                    RequestGuards::default(),
                );
            }
        };
        let mut guards = RequestGuards {
            timeout: route.guards.timeout,
            cutoff: None,
            max_body: route.guards.max_body,
        };
        if let Some(max) = route.guards.max_body {
            if content_length(&req).is_some_and(|n| n > max) {
                return (
                    Box::pin(ready(too_large(max, req.version()))),
                    route.tally.get(),
                    RequestGuards::default(),
                );
            }
            let cutoff = Arc::new(Cutoff::default());
            if req.body_mut().limit(max, cutoff.clone()) {
                guards.cutoff = Some(cutoff);
            }
        }
        if guards.timeout.is_some() && guards.cutoff.is_none() {
            guards.cutoff = Some(Arc::new(Cutoff::default()));
        }
        if let Some(uri) = stripped {
            *req.uri_mut() = uri;
        }
        if route.wants.route_match {
            req.extensions_mut().insert(RouteMatch {
                pattern: route.pattern.clone(),
                rest,
            });
        }
        if route.wants.client_addr
            && let Some(c) = client
        {
            req.extensions_mut().insert(c.client);
            if let Some(real) = c.proxied_by {
                req.extensions_mut().insert(ProxiedBy(real));
            }
        }
        (route.handler.call(req), route.tally.get(), guards)
    }

    /// Find the route for `path` and check `method` against it.
    fn lookup<'t, 'p>(&'t self, method: &Method, path: &'p str) -> Lookup<'t, 'p> {
        let (route, rest) = match self.exact.get(path) {
            Some(r) => (&**r, None),
            None => match self.find_wildcard(path) {
                Some((r, rest)) => (r, Some(rest)),
                None => return Lookup::NotFound,
            },
        };
        match &route.methods {
            Some(a) if !a.allows(method) => Lookup::MethodNotAllowed(route, &a.allow),
            _ => Lookup::Found { route, rest },
        }
    }

    /// The wildcard route with the longest prefix matching `path`, and the rest of the path.
    fn find_wildcard<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        if self.wildcard.is_empty() {
            return None;
        }
        // Candidate prefixes, longest first: the whole path, then the path cut before each '/',
        // starting at the longest that can match.
        let mut end = if path.len() <= self.wildcard_max {
            path.len()
        } else {
            path.as_bytes()[..=self.wildcard_max]
                .iter()
                .rposition(|&b| b == b'/')?
        };
        loop {
            let prefix = &path[..end];
            let found = match end {
                0 => self.catch_all.as_ref(),
                _ => self.wildcard.get(prefix),
            };
            if let Some(r) = found {
                let rest = &path[end..];
                return Some((r, rest.strip_prefix('/').unwrap_or(rest)));
            }
            end = prefix.rfind('/')?;
        }
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.list.iter().map(|r| (&*r.pattern, &*r.handler_name)))
            .finish()
    }
}

/// The request's `Content-Length`, if it has a valid one.
fn content_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The `413` answer for a body over `max` bytes. HTTP/1: the connection closes after it (the
/// body is left unread, so the connection cannot carry another request).
pub(crate) fn too_large(max: u64, version: http::Version) -> crate::Response {
    let mut r = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("413 request body too large (max_request_body is {max} bytes)\n"),
    );
    if version < http::Version::HTTP_2 {
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// `uri` with its path replaced by `/` and `rest` (what a wildcard matched), the query kept:
/// `/v2/api/users/3?x=1` under `/v2/*rest` becomes `/api/users/3?x=1`. `None` only if the result
/// does not parse, which a path that did cannot cause.
fn strip_prefix(uri: &http::Uri, rest: &str) -> Option<http::Uri> {
    let mut pq = String::with_capacity(1 + rest.len() + uri.query().map_or(0, |q| q.len() + 1));
    pq.push('/');
    pq.push_str(rest);
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).ok()?);
    http::Uri::from_parts(parts).ok()
}

mod methods;
#[cfg(test)]
mod tests;
