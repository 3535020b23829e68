//! Unit tests of the route table: patterns, lookups, methods, building from a config, and
//! dispatch over HTTP.

use std::path::PathBuf;

use super::*;

fn p(pattern: &str) -> RoutePattern {
    RoutePattern::parse(pattern).unwrap()
}
use crate::config::tree::Value;
use crate::config::{Node, Params, Pos, RouteConfig};
use crate::handler::{ClientAddr, FnHandler};
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
        Lookup::MethodNotAllowed(_, _) => panic!("no methods configured"),
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
        Lookup::MethodNotAllowed(_, allow) => assert_eq!(allow, "POST, GET, HEAD"),
        _ => panic!("PUT allowed"),
    }
    match t.lookup(&Method::GET, "/d/x") {
        Lookup::MethodNotAllowed(_, allow) => assert_eq!(allow, "DELETE"),
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
        access_log: None,
        routes,
        unix_mode: None,
        proxy_protocol: false,
        defer_accept: true,
        max_connections: crate::config::guards::DEFAULT_MAX_CONNECTIONS,
        max_request_body: None,
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
        Lookup::MethodNotAllowed(_, allow) => assert_eq!(allow, "GET, HEAD"),
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
        Lookup::MethodNotAllowed(_, allow) => assert_eq!(allow, "GET, HEAD, POST"),
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
    let client = Peer::direct(ClientAddr(([127, 0, 0, 1], 4321).into()));
    let app = direct(move |req| t.dispatch_from(req, client).0);

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

/// Answers the client address and the real peer it found.
struct PeerEcho;

impl Handler for PeerEcho {
    fn call(&self, req: Request) -> BoxFuture {
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        let body = format!(
            "client={client:?} real={:?}",
            crate::handler::real_peer(&req)
        );
        Box::pin(ready(text(StatusCode::OK, body)))
    }
}

#[tokio::test]
async fn a_proxied_client_keeps_the_real_peer_beside_it() {
    let mut t = RouteTable::new();
    t.insert(&p("/"), "echo", Arc::new(PeerEcho), None);
    let t = Arc::new(t);
    let proxied = Peer {
        client: ClientAddr(([203, 0, 113, 7], 5000).into()),
        proxied_by: Some(([127, 0, 0, 1], 4321).into()),
    };
    let t2 = t.clone();
    let app = direct(move |req| t2.dispatch_from(req, proxied).0);
    let r = fetch(&app, Method::GET, "/", &[]).await;
    assert_eq!(
        r.body(),
        "client=Some(203.0.113.7:5000) real=Some(127.0.0.1:4321)"
    );
    let plain = Peer::direct(ClientAddr(([10, 0, 0, 1], 80).into()));
    let app = direct(move |req| t.dispatch_from(req, plain).0);
    let r = fetch(&app, Method::GET, "/", &[]).await;
    assert_eq!(r.body(), "client=Some(10.0.0.1:80) real=Some(10.0.0.1:80)");
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
