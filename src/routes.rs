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
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::tree::Value;
use crate::config::{ConfigError, Params, RoutePattern, ServerConfig};
use crate::fnv::Fnv1a;
use crate::handler::{BoxFuture, ClientAddr, Handler, Request, RouteMatch, Wants};
use crate::handler::{Registry, method_not_allowed, not_found};

/// A server's routes: built from its config by [`RouteTable::build`], extended by the admin
/// module with [`RouteTable::insert`], and used for every request by [`RouteTable::dispatch_from`].
#[derive(Default)]
pub(crate) struct RouteTable {
    /// Exact routes by path.
    exact: PathMap,
    /// Wildcard routes by prefix (the pattern without `/*name`; `""` for `/*name`).
    wildcard: PathMap,
    /// The longest wildcard prefix: no candidate longer than this is looked up (with only
    /// `/*rest`, the usual way to mount a whole service, a lookup is one hash of `""`).
    wildcard_max: usize,
    /// Every route, in the order added (for [`RouteTable::routes`]).
    list: Vec<Arc<Route>>,
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
}

/// A route's `methods`, and the `Allow` header value listing them.
struct Allowed {
    methods: Box<[Method]>,
    allow: HeaderValue,
}

impl Allowed {
    /// Normalise a method list: drop duplicates, add `HEAD` when `GET` is listed.
    fn new(methods: Vec<Method>) -> Allowed {
        let mut seen: Vec<Method> = Vec::with_capacity(methods.len() + 1);
        for m in methods {
            if !seen.contains(&m) {
                seen.push(m);
            }
        }
        if let Some(i) = seen.iter().position(|m| m == Method::GET)
            && !seen.contains(&Method::HEAD)
        {
            seen.insert(i + 1, Method::HEAD);
        }
        let joined = seen
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        // Methods are tokens, so the joined list is always a valid header value.
        let allow = HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""));
        Allowed {
            methods: seen.into_boxed_slice(),
            allow,
        }
    }

    fn allows(&self, m: &Method) -> bool {
        self.methods.iter().any(|x| x == m)
    }
}

/// The outcome of a lookup.
enum Lookup<'t, 'p> {
    /// A route, and for a wildcard the rest of the path (no leading `/`).
    Found {
        route: &'t Route,
        rest: Option<&'p str>,
    },
    /// A route matched but does not allow the method; the `Allow` value.
    MethodNotAllowed(&'t HeaderValue),
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
            let handler = factory(params)?;
            table.add(
                &route.pattern,
                &route.handler,
                handler,
                methods,
                strip_prefix,
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
        self.add(pattern, handler_name, handler, methods, false)
    }

    /// [`RouteTable::insert`], with `strip_prefix` (for a wildcard pattern).
    fn add(
        &mut self,
        pattern: &RoutePattern,
        handler_name: &str,
        handler: Arc<dyn Handler>,
        methods: Option<Vec<Method>>,
        strip_prefix: bool,
    ) {
        let route = Arc::new(Route {
            spec: pattern.clone(),
            pattern: Arc::from(pattern.as_str()),
            handler_name: Box::from(handler_name),
            wants: handler.wants(),
            handler,
            methods: methods.map(Allowed::new),
            strip_prefix,
        });
        let map = match pattern.wildcard_prefix() {
            None => &mut self.exact,
            Some(key) => {
                self.wildcard_max = self.wildcard_max.max(key.len());
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
    pub(crate) fn routes(&self) -> Vec<(String, String)> {
        self.list
            .iter()
            .map(|r| (r.pattern.to_string(), r.handler_name.to_string()))
            .collect()
    }

    /// Route one request: `404`, `405`, or the matched handler's answer (with a [`RouteMatch`]
    /// in the request's extensions).
    #[cfg(test)]
    pub(crate) fn dispatch(&self, req: Request) -> BoxFuture {
        self.route(req, None)
    }

    /// Route one request from `client`: as `RouteTable::dispatch`, and the handler also gets
    /// a [`ClientAddr`] if it [wants](Handler::wants) one.
    pub(crate) fn dispatch_from(&self, req: Request, client: ClientAddr) -> BoxFuture {
        self.route(req, Some(client))
    }

    fn route(&self, mut req: Request, client: Option<ClientAddr>) -> BoxFuture {
        let (route, rest, stripped) = match self.lookup(req.method(), req.uri().path()) {
            Lookup::Found { route, rest } => (
                route,
                // Copied only if it is going to be used.
                rest.filter(|_| route.wants.route_match).map(str::to_owned),
                rest.filter(|_| route.strip_prefix)
                    .and_then(|r| strip_prefix(req.uri(), r)),
            ),
            Lookup::MethodNotAllowed(allow) => {
                return Box::pin(ready(method_not_allowed(allow.clone())));
            }
            Lookup::NotFound => return Box::pin(ready(not_found())),
        };
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
            req.extensions_mut().insert(c);
        }
        route.handler.call(req)
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
            Some(a) if !a.allows(method) => Lookup::MethodNotAllowed(&a.allow),
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
            if let Some(r) = self.wildcard.get(prefix) {
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

/// Read a route's optional `methods`: a string or a list of strings, each an HTTP method (any
/// case; stored uppercase). `Ok(None)` when absent.
/// The methods a route's `methods` may list: HTTP's own and WebDAV's. Any other word (`PSOT`)
/// is a typo far more often than an extension method, and would make the route answer 405 to
/// every request.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
];

fn parse_methods(params: &Params) -> Result<Option<Vec<Method>>, ConfigError> {
    let Some(node) = params.get("methods") else {
        return Ok(None);
    };
    let key_path = format!("{}.methods", params.key_path);
    let err = |pos, key_path: String, msg: String| {
        ConfigError::new(params.file.as_deref(), Some(pos), key_path, msg)
    };
    let one = |n: &crate::config::Node, key_path: String| -> Result<Method, ConfigError> {
        let Value::Str(s) = &n.value else {
            return Err(err(
                n.pos,
                key_path,
                "expected an HTTP method such as \"GET\"".into(),
            ));
        };
        let upper = s.trim().to_ascii_uppercase();
        if upper.is_empty() {
            return Err(err(n.pos, key_path, "empty HTTP method".into()));
        }
        if !KNOWN_METHODS.contains(&upper.as_str()) {
            let hint = match crate::config::nearest(&upper, KNOWN_METHODS) {
                Some(m) => format!("did you mean {m:?}?"),
                None => format!("expected one of {}", KNOWN_METHODS.join(", ")),
            };
            return Err(err(
                n.pos,
                key_path,
                format!("unknown HTTP method {s:?} ({hint})"),
            ));
        }
        Method::from_bytes(upper.as_bytes())
            .map_err(|_| err(n.pos, key_path, format!("invalid HTTP method {s:?}")))
    };
    let methods = match &node.value {
        Value::Str(_) => vec![one(node, key_path)?],
        Value::Seq(items) => {
            if items.is_empty() {
                return Err(err(
                    node.pos,
                    key_path,
                    "list at least one HTTP method (or leave `methods` out to allow all)".into(),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, n)| one(n, format!("{key_path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(err(
                node.pos,
                key_path,
                "expected a list of HTTP methods such as [GET, POST]".into(),
            ));
        }
    };
    Ok(Some(methods))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn p(pattern: &str) -> RoutePattern {
        RoutePattern::parse(pattern).unwrap()
    }
    use crate::config::{Node, Pos, RouteConfig};
    use crate::handler::FnHandler;
    use crate::handler::{NOT_FOUND_BODY, text};
    use crate::handlers::test_util::{direct, fetch, params, s};
    use http::StatusCode;

    /// A handler answering `NAME PATTERN REST` from the request's [`RouteMatch`].
    fn echo(name: &'static str) -> Arc<dyn Handler> {
        Arc::new(FnHandler(move |req: Request| async move {
            let m = req.extensions().get::<RouteMatch>().cloned();
            let (pattern, rest) = m.map_or(("-".into(), None), |m| (m.pattern, m.rest));
            text(
                StatusCode::OK,
                format!("{name} {pattern} {}", rest.as_deref().unwrap_or("-")),
            )
        }))
    }

    fn table(patterns: &[&str]) -> RouteTable {
        let mut t = RouteTable::new();
        for p in patterns {
            // The table also takes what the config refuses (an unnamed `/a/b/*`), as the admin
            // routes could give it.
            let pattern = RoutePattern::parse(p).unwrap_or_else(|_| {
                let i = p.rfind("/*").unwrap();
                RoutePattern::wildcard(&p[..i], &p[i + 2..])
            });
            t.insert(&pattern, "echo", echo("x"), None);
        }
        t
    }

    /// The pattern and rest a GET of `path` resolves to; `None` for 404.
    fn find<'p>(t: &RouteTable, path: &'p str) -> Option<(String, Option<&'p str>)> {
        match t.lookup(&Method::GET, path) {
            Lookup::Found { route, rest } => Some((route.pattern.to_string(), rest)),
            Lookup::MethodNotAllowed(_) => panic!("no methods configured"),
            Lookup::NotFound => None,
        }
    }

    fn found(pattern: &str, rest: Option<&'static str>) -> Option<(String, Option<&'static str>)> {
        Some((pattern.to_string(), rest))
    }

    #[test]
    fn exact_routes() {
        let t = table(&["/", "/pid", "/a/b/"]);
        assert_eq!(find(&t, "/"), found("/", None));
        assert_eq!(find(&t, "/pid"), found("/pid", None));
        assert_eq!(find(&t, "/a/b/"), found("/a/b/", None));
        assert_eq!(find(&t, "/pid/"), None);
        assert_eq!(find(&t, "/a/b"), None);
        assert_eq!(find(&t, "/nope"), None);
    }

    #[test]
    fn wildcard_routes() {
        let t = table(&["/files/*path"]);
        assert_eq!(find(&t, "/files"), found("/files/*path", Some("")));
        assert_eq!(find(&t, "/files/"), found("/files/*path", Some("")));
        assert_eq!(find(&t, "/files/a/b"), found("/files/*path", Some("a/b")));
        assert_eq!(find(&t, "/files/a/b/"), found("/files/*path", Some("a/b/")));
        assert_eq!(find(&t, "/files//x"), found("/files/*path", Some("/x")));
        assert_eq!(find(&t, "/filesx"), None);
        assert_eq!(find(&t, "/"), None);
    }

    #[test]
    fn lookups_start_at_the_longest_wildcard_prefix() {
        // Only a catch-all: one lookup, whatever the path.
        let t = table(&["/*rest"]);
        assert_eq!(find(&t, "/a/b/c/d"), found("/*rest", Some("a/b/c/d")));
        assert_eq!(find(&t, "/"), found("/*rest", Some("")));
        // The longest prefix is 4 bytes: `/a/bc/d` starts at `/a`, `/a/b/x` at `/a/b`.
        let t = table(&["/a/b/*p", "/x/*q"]);
        assert_eq!(find(&t, "/a/bc/d"), None);
        assert_eq!(find(&t, "/a/b/x/y"), found("/a/b/*p", Some("x/y")));
        assert_eq!(find(&t, "/a/b"), found("/a/b/*p", Some("")));
        assert_eq!(find(&t, "/x"), found("/x/*q", Some("")));
        assert_eq!(find(&t, "/xy/z"), None);
        assert_eq!(find(&t, "/x/yyyyyy/z"), found("/x/*q", Some("yyyyyy/z")));
    }

    #[test]
    fn longest_prefix_wins_and_exact_beats_wildcard() {
        let t = table(&["/*all", "/a/*p", "/a/b/*q", "/a/b/c", "/a/b/*"]);
        assert_eq!(find(&t, "/"), found("/*all", Some("")));
        assert_eq!(find(&t, "/x/y"), found("/*all", Some("x/y")));
        assert_eq!(find(&t, "/a"), found("/a/*p", Some("")));
        assert_eq!(find(&t, "/a/bb"), found("/a/*p", Some("bb")));
        // `/a/b/*` replaced `/a/b/*q` (same prefix).
        assert_eq!(find(&t, "/a/b/x"), found("/a/b/*", Some("x")));
        assert_eq!(find(&t, "/a/b/c"), found("/a/b/c", None));
        assert_eq!(find(&t, "/a/b/c/d"), found("/a/b/*", Some("c/d")));
        let routes = t.routes();
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[2], ("/a/b/*".to_string(), "echo".to_string()));
    }

    #[test]
    fn methods_give_405_with_allow() {
        let mut t = RouteTable::new();
        t.insert(
            &p("/w"),
            "echo",
            echo("w"),
            Some(vec![Method::POST, Method::GET, Method::POST]),
        );
        t.insert(&p("/d/*p"), "echo", echo("d"), Some(vec![Method::DELETE]));
        for m in [Method::GET, Method::HEAD, Method::POST] {
            assert!(matches!(t.lookup(&m, "/w"), Lookup::Found { .. }), "{m}");
        }
        match t.lookup(&Method::PUT, "/w") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "POST, GET, HEAD"),
            _ => panic!("PUT allowed"),
        }
        match t.lookup(&Method::GET, "/d/x") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "DELETE"),
            _ => panic!("GET allowed"),
        }
    }

    fn server(routes: Vec<RouteConfig>) -> ServerConfig {
        ServerConfig {
            name: "s".into(),
            http: vec![],
            https: None,
            admin: None,
            readiness: None,
            routes,
        }
    }

    fn route(pattern: &str, handler: &str, entries: Vec<(&str, Node)>) -> RouteConfig {
        let mut p = params(PathBuf::from("/"), entries);
        p.key_path = format!("servers.s.routes.{pattern}");
        RouteConfig {
            pattern: RoutePattern::parse(pattern).unwrap(),
            handler: handler.into(),
            handler_pos: Pos::new(4, 12),
            params: p,
        }
    }

    fn builtins() -> Registry {
        let mut r = Registry::default();
        crate::handlers::register_builtins(&mut r);
        r
    }

    #[test]
    fn build_from_config() {
        let s = server(vec![
            route("/", "hello", vec![]),
            route("/pid", "pid", vec![("methods", s("get"))]),
            route("/h/*x", "health", vec![]),
        ]);
        let t = RouteTable::build(&s, &builtins()).unwrap();
        assert_eq!(
            t.routes(),
            [("/", "hello"), ("/pid", "pid"), ("/h/*x", "health")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        match t.lookup(&Method::POST, "/pid") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "GET, HEAD"),
            _ => panic!("POST allowed"),
        }
    }

    #[test]
    fn unknown_handler() {
        let s = server(vec![route("/x", "helo", vec![])]);
        let err = RouteTable::build(&s, &builtins()).unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(4, 12)));
        assert_eq!(err.key_path, "servers.s.routes./x.handler");
        assert_eq!(
            err.message,
            "unknown handler \"helo\" (registered: health, hello, pid, ready, sleep, static)"
        );
    }

    #[test]
    fn bad_methods() {
        let seq = |items: Vec<Node>| Node {
            value: Value::Seq(items),
            pos: Pos::new(5, 3),
        };
        let int = Node {
            value: Value::Int(1),
            pos: Pos::new(6, 1),
        };
        let cases: Vec<(Node, &str, &str)> = vec![
            (seq(vec![]), "servers.s.routes./x.methods", "at least one"),
            (
                seq(vec![s("GET"), s("G T")]),
                "servers.s.routes./x.methods[1]",
                "unknown HTTP method \"G T\"",
            ),
            (
                seq(vec![s("PSOT")]),
                "servers.s.routes./x.methods[0]",
                "unknown HTTP method \"PSOT\" (did you mean \"POST\"?)",
            ),
            (
                seq(vec![int.clone()]),
                "servers.s.routes./x.methods[0]",
                "expected an HTTP method",
            ),
            (int, "servers.s.routes./x.methods", "expected a list"),
        ];
        for (node, key_path, msg) in cases {
            let s = server(vec![route("/x", "pid", vec![("methods", node)])]);
            let err = RouteTable::build(&s, &builtins()).unwrap_err();
            assert_eq!(err.key_path, key_path);
            assert!(err.message.contains(msg), "{err}");
        }
        let s = server(vec![route(
            "/x",
            "pid",
            vec![("methods", seq(vec![s("get"), s("Post")]))],
        )]);
        let t = RouteTable::build(&s, &builtins()).unwrap();
        match t.lookup(&Method::PUT, "/x") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "GET, HEAD, POST"),
            _ => panic!("PUT allowed"),
        }
    }

    #[test]
    fn bad_patterns() {
        // Malformed patterns are refused once, where the config is read
        // (`config::RoutePattern::parse`, tested there); two that overlap are refused here.
        let s = server(vec![
            route("/a/*x", "pid", vec![]),
            route("/a/*y", "pid", vec![]),
        ]);
        let err = RouteTable::build(&s, &builtins()).unwrap_err();
        assert!(
            err.message.contains("matches the same paths as \"/a/*x\""),
            "{err}"
        );
        assert_eq!(err.pos, Some(Pos::new(2, 5)));
    }

    #[test]
    fn factory_errors_pass_through() {
        let s = server(vec![route("/s", "sleep", vec![("duraton", s("1s"))])]);
        let err = RouteTable::build(&s, &builtins()).unwrap_err();
        assert!(err.to_string().contains("duraton"), "{err}");
    }

    #[tokio::test]
    async fn dispatch_over_http() {
        let mut t = RouteTable::new();
        t.insert(&p("/e"), "echo", echo("e"), None);
        t.insert(&p("/w/*rest"), "echo", echo("w"), Some(vec![Method::GET]));
        let t = Arc::new(t);
        let app = direct(move |req| t.dispatch(req));

        let r = fetch(&app, Method::GET, "/e?q=1", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), "e /e -");
        let r = fetch(&app, Method::GET, "/w/a/%2e%2e/b", &[]).await;
        assert_eq!(r.body(), "w /w/*rest a/%2e%2e/b");
        let r = fetch(&app, Method::GET, "/nope", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.body(), NOT_FOUND_BODY);
        let r = fetch(&app, Method::POST, "/w/x", &[]).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }

    /// Answers which of `RouteMatch` and `ClientAddr` it found in the request.
    struct Probe(Wants);

    impl Handler for Probe {
        fn call(&self, req: Request) -> BoxFuture {
            let m = req.extensions().get::<RouteMatch>();
            let body = format!(
                "route={:?} client={:?}",
                m.map(|m| (m.pattern.to_string(), m.rest.clone())),
                req.extensions().get::<ClientAddr>().map(|c| c.0.port())
            );
            Box::pin(ready(text(StatusCode::OK, body)))
        }

        fn wants(&self) -> Wants {
            self.0
        }
    }

    #[tokio::test]
    async fn extensions_follow_what_the_handler_wants() {
        let mut t = RouteTable::new();
        t.insert(&p("/all/*rest"), "probe", Arc::new(Probe(Wants::ALL)), None);
        t.insert(
            &p("/none/*rest"),
            "probe",
            Arc::new(Probe(Wants::NONE)),
            None,
        );
        let route_only = Wants {
            route_match: true,
            client_addr: false,
        };
        t.insert(&p("/route"), "probe", Arc::new(Probe(route_only)), None);
        let t = Arc::new(t);
        let client = ClientAddr(([127, 0, 0, 1], 4321).into());
        let app = direct(move |req| t.dispatch_from(req, client));

        let r = fetch(&app, Method::GET, "/all/a/b", &[]).await;
        assert_eq!(
            r.body(),
            "route=Some((\"/all/*rest\", Some(\"a/b\"))) client=Some(4321)"
        );
        let r = fetch(&app, Method::GET, "/none/a", &[]).await;
        assert_eq!(r.body(), "route=None client=None");
        let r = fetch(&app, Method::GET, "/route", &[]).await;
        assert_eq!(r.body(), "route=Some((\"/route\", None)) client=None");
    }

    fn b(v: bool) -> Node {
        Node {
            value: Value::Bool(v),
            pos: Pos::new(7, 9),
        }
    }

    /// Answers its request's path and query.
    fn path_echo() -> Registry {
        let mut r = Registry::default();
        let f: crate::handler::Factory = Arc::new(|p: &Params| {
            p.deny_unknown(&[])?;
            let h: Arc<dyn Handler> = Arc::new(FnHandler(|req: Request| async move {
                text(StatusCode::OK, req.uri().to_string())
            }));
            Ok(h)
        });
        r.insert("path", f);
        r
    }

    #[tokio::test]
    async fn strip_prefix_hands_the_rest_of_the_path_to_the_handler() {
        let s = server(vec![
            route("/v2/*rest", "path", vec![("strip_prefix", b(true))]),
            route("/v1/*rest", "path", vec![("strip_prefix", b(false))]),
            route("/*all", "path", vec![("strip_prefix", b(true))]),
        ]);
        let t = Arc::new(RouteTable::build(&s, &path_echo()).unwrap());
        let app = direct(move |req| t.dispatch(req));
        for (asked, seen) in [
            ("/v2/api/users/3", "/api/users/3"),
            ("/v2/api/users/3?x=1&y", "/api/users/3?x=1&y"),
            ("/v2", "/"),
            ("/v2/", "/"),
            ("/v2?q", "/?q"),
            ("/v2//x", "//x"),
            ("/v2/a%2Fb", "/a%2Fb"),
            // Without strip_prefix the path is unchanged.
            ("/v1/api/users/3?x=1", "/v1/api/users/3?x=1"),
            // A `/*all` route strips nothing.
            ("/other/x?y", "/other/x?y"),
        ] {
            let r = fetch(&app, Method::GET, asked, &[]).await;
            assert_eq!(r.body(), seen, "{asked}");
        }
        // An absolute-form URI (HTTP/2's :scheme and :authority) keeps its scheme and host.
        let Some(uri) = strip_prefix(&"https://h:8443/v2/a?b".parse().unwrap(), "a") else {
            panic!("parses");
        };
        assert_eq!(uri, "https://h:8443/a?b");
    }

    #[test]
    fn strip_prefix_needs_a_wildcard_route_and_a_boolean() {
        let srv = server(vec![route("/x", "path", vec![("strip_prefix", b(true))])]);
        let err = RouteTable::build(&srv, &path_echo()).unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(7, 9)));
        assert_eq!(err.key_path, "servers.s.routes./x.strip_prefix");
        assert!(err.message.contains("needs a wildcard route"), "{err}");
        let srv = server(vec![route(
            "/x/*r",
            "path",
            vec![("strip_prefix", s("yes"))],
        )]);
        let err = RouteTable::build(&srv, &path_echo()).unwrap_err();
        assert_eq!(err.key_path, "servers.s.routes./x/*r.strip_prefix");
        assert_eq!(err.pos, Some(Pos::new(3, 7)));
        // Accepted by every handler's params, as `methods` is.
        let srv = server(vec![route(
            "/h/*r",
            "health",
            vec![("strip_prefix", b(true))],
        )]);
        assert!(RouteTable::build(&srv, &builtins()).is_ok());
    }

    #[tokio::test]
    async fn builtins_over_http() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("www")).unwrap();
        std::fs::write(tmp.path().join("www/index.html"), "<p>hi</p>\n").unwrap();
        std::fs::write(tmp.path().join("secret"), "no\n").unwrap();
        let mut st = route("/files/*path", "static", vec![("dir", s("www"))]);
        st.params.base_dir = tmp.path().to_path_buf();
        let s = server(vec![
            route("/", "hello", vec![("text", s("hey"))]),
            route("/health", "health", vec![]),
            st,
        ]);
        let t = Arc::new(RouteTable::build(&s, &builtins()).unwrap());
        let app = direct(move |req| t.dispatch(req));

        assert_eq!(fetch(&app, Method::GET, "/", &[]).await.body(), "hey\n");
        let r = fetch(&app, Method::HEAD, "/", &[]).await;
        assert_eq!(r.headers()["content-length"], "4");
        assert_eq!(r.body(), "");
        let r = fetch(&app, Method::PUT, "/health", &[]).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        let r = fetch(&app, Method::GET, "/files/", &[]).await;
        assert_eq!(r.body(), "<p>hi</p>\n");
        for path in [
            "/files/../secret",
            "/files/%2e%2e/secret",
            "/files/..%2fsecret",
        ] {
            let r = fetch(&app, Method::GET, path, &[]).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}
