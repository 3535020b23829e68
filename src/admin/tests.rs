//! Unit tests of the admin routes outside a worker (no supervisor: operations answer
//! `unavailable`, which exercises the error paths); the integration tests in `tests/it/admin.rs`
//! run them against a real host.

use std::os::unix::fs::PermissionsExt;

use super::*;
use http::HeaderMap;

use super::answer::status_for;
use crate::handlers::test_util::{Direct, direct, fetch};

fn admin_config(token: Option<&str>, dirs: Vec<PathBuf>) -> AdminConfig {
    AdminConfig {
        path: "/debug/admin".into(),
        token: token.map(str::to_owned),
        allowed_exe_dirs: dirs,
        allowed_hosts: Vec::new(),
    }
}

fn admin(token: Option<&str>, dirs: Vec<PathBuf>) -> Admin {
    let cfg = crate::config::Config::embedded().unwrap();
    let server = &cfg.servers[0];
    Admin::new(&cfg, server, &admin_config(token, dirs), None)
}

/// The admin routes of the embedded default server, as if every client were `peer`.
fn serve_admin(token: Option<&str>, peer: &str) -> Direct {
    let cfg = crate::config::Config::embedded().unwrap();
    let server = &cfg.servers[0];
    let mut table = RouteTable::new();
    install(&mut table, &cfg, server, &admin_config(token, vec![]), None);
    let table = Arc::new(table);
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    direct(move |mut req| {
        req.extensions_mut().insert(ClientAddr(peer));
        table.dispatch(req)
    })
}

/// As `serve_admin`, for connections whose PROXY header named `client` while the connection
/// really came from `real`.
fn serve_admin_proxied(client: &str, real: &str) -> Direct {
    let cfg = crate::config::Config::embedded().unwrap();
    let server = &cfg.servers[0];
    let mut table = RouteTable::new();
    install(&mut table, &cfg, server, &admin_config(None, vec![]), None);
    let table = Arc::new(table);
    let peer = crate::handler::Peer {
        client: ClientAddr(client.parse().unwrap()),
        proxied_by: Some(real.parse().unwrap()),
    };
    direct(move |req| table.dispatch_from(req, peer).0)
}

#[tokio::test]
async fn the_loopback_check_uses_the_real_peer_not_the_proxied_one() {
    // A PROXY header claiming loopback from a connection that came from elsewhere: refused.
    let app = serve_admin_proxied("127.0.0.1:5000", "192.0.2.9:4000");
    let r = fetch(&app, Method::GET, "/debug/admin/nope", &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        String::from_utf8_lossy(r.body()).contains("192.0.2.9"),
        "the refusal names the real peer"
    );
    // A proxy on this machine forwarding a distant client: the real peer is loopback, served.
    let app = serve_admin_proxied("192.0.2.9:5000", "127.0.0.1:4000");
    let r = fetch(&app, Method::GET, "/debug/admin/nope", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[test]
fn paths_name_actions() {
    let a = admin(None, vec![]);
    assert_eq!(a.action("/debug/admin"), Some(Action::Page));
    assert_eq!(a.action("/debug/admin/"), Some(Action::Page));
    assert_eq!(a.action("/debug/admin/status"), Some(Action::Status));
    assert_eq!(a.action("/debug/admin/restart"), Some(Action::Restart));
    assert_eq!(a.action("/debug/admin/reload"), Some(Action::Restart));
    assert_eq!(a.action("/debug/admin/shutdown"), Some(Action::Shutdown));
    assert_eq!(a.action("/debug/admin/nope"), None);
    assert_eq!(a.action("/debug/admin/restart/"), None);
    assert_eq!(a.action_url("restart"), "/debug/admin/restart");
    let prefix = |p: &str| {
        RoutePattern::parse(p)
            .unwrap()
            .wildcard_prefix()
            .map(str::to_string)
    };
    assert_eq!(prefix("/a/*x").as_deref(), Some("/a"));
    assert_eq!(
        RoutePattern::wildcard("", "action").wildcard_prefix(),
        Some("")
    );
    assert_eq!(prefix("/a"), None);
}

#[test]
fn warns_when_an_admin_without_token_listens_beyond_loopback() {
    let cfg = crate::config::Config::embedded().unwrap();
    let mut server = cfg.servers[0].clone();
    server.http = vec![ListenAddr::parse(":8199").unwrap()];
    let w = exposure_warning(&server, &admin_config(None, vec![])).unwrap();
    assert!(w.contains("no token") && w.contains("http://*:8199"), "{w}");
    let w = exposure_warning(&server, &admin_config(Some("t"), vec![])).unwrap();
    assert!(w.contains("clear text"), "{w}");
    server.http = vec![
        ListenAddr::parse("127.0.0.1:8199").unwrap(),
        ListenAddr::parse("[::1]:8199").unwrap(),
    ];
    assert_eq!(exposure_warning(&server, &admin_config(None, vec![])), None);
    server.http = vec![ListenAddr::parse("192.0.2.1:8199").unwrap()];
    assert!(exposure_warning(&server, &admin_config(None, vec![])).is_some());
}

#[test]
fn format_negotiation() {
    let h = |pairs: &[(&'static str, &'static str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    };
    assert_eq!(negotiate(&h(&[]), None), Format::Text);
    assert_eq!(negotiate(&h(&[("accept", "*/*")]), None), Format::Text);
    assert_eq!(
        negotiate(&h(&[("accept", "application/json")]), None),
        Format::Json
    );
    assert_eq!(negotiate(&h(&[]), Some("json")), Format::Json);
    assert_eq!(
        negotiate(&h(&[("accept", "text/html,application/xhtml+xml")]), None),
        Format::Html
    );
    // `curl -d newExeFilePath=…` posts a form with `Accept: */*`: it reads text. A browser
    // posting the page's form says it accepts HTML.
    assert_eq!(
        negotiate(
            &h(&[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "*/*")
            ]),
            None
        ),
        Format::Text
    );
    assert_eq!(
        negotiate(
            &h(&[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            ]),
            None
        ),
        Format::Html
    );
    assert_eq!(
        negotiate(&h(&[("accept", "text/html")]), Some("text")),
        Format::Text
    );
}

#[test]
fn op_errors_map_to_status_codes() {
    let cases = [
        (OpError::BadExecutable("x".into()), 400),
        (OpError::Forbidden("x".into()), 403),
        (OpError::Busy("x".into()), 409),
        (OpError::Failed("x".into()), 502),
        (OpError::Timeout("x".into()), 504),
        (OpError::ShuttingDown, 503),
        (OpError::Unavailable("x".into()), 503),
    ];
    for (e, code) in cases {
        assert_eq!(status_for(&e).as_u16(), code, "{e}");
    }
}

#[test]
fn executable_paths_are_checked_against_allowed_dirs() {
    let d = tempfile::tempdir().unwrap();
    let allowed = d.path().join("releases");
    std::fs::create_dir(&allowed).unwrap();
    let inside = allowed.join("app");
    std::fs::write(&inside, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = d.path().join("app");
    std::fs::write(&outside, "#!/bin/sh\n").unwrap();
    // A symlink inside the allowed dir pointing out of it is judged by its target.
    let link = allowed.join("escape");
    std::os::unix::fs::symlink(&outside, &link).unwrap();

    let a = admin(None, vec![allowed.clone()]);
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(a.check_exe(inside.to_str().unwrap()), Ok(canon(&inside)));
    let dotdot = format!("{}/../releases/app", allowed.display());
    assert_eq!(a.check_exe(&dotdot), Ok(canon(&inside)));
    assert!(matches!(
        a.check_exe(outside.to_str().unwrap()),
        Err(OpError::Forbidden(_))
    ));
    // Refused without telling where the link points.
    match a.check_exe(link.to_str().unwrap()) {
        Err(OpError::Forbidden(m)) => {
            assert!(m.contains(link.to_str().unwrap()), "{m}");
            assert!(!m.contains(canon(&outside).to_str().unwrap()), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.check_exe(allowed.join("missing").to_str().unwrap()),
        Err(OpError::BadExecutable(_))
    ));
    assert!(matches!(
        a.check_exe("relative/app"),
        Err(OpError::BadExecutable(_))
    ));
    // Without a list any absolute path goes on to the supervisor's checks.
    let open = admin(None, vec![]);
    assert_eq!(
        open.check_exe(outside.to_str().unwrap()),
        Ok(outside.clone())
    );
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let app = serve_admin(Some("s3cret"), "192.0.2.9:4000");
    let r = fetch(&app, Method::GET, "/debug/admin/status", &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"apphost admin\""
    );
    let r = fetch(
        &app,
        Method::GET,
        "/debug/admin/status",
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"apphost admin\"")
    );
    // Right token from a non-loopback address: let in (no supervisor here, hence 503).
    let r = fetch(
        &app,
        Method::GET,
        "/debug/admin/status",
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["worker"]["pid"], std::process::id());
    assert_eq!(v["admin"]["auth"], "bearer_token");
    assert!(
        v["supervisor_error"]
            .as_str()
            .unwrap()
            .contains("no supervisor")
    );
}

#[tokio::test]
async fn without_token_remote_clients_get_403() {
    let app = serve_admin(None, "192.0.2.9:4000");
    for path in ["/debug/admin", "/debug/admin/status", "/debug/admin/nope"] {
        let r = fetch(&app, Method::GET, path, &[]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let app = serve_admin(None, "[::ffff:127.0.0.1]:4000");
    let r = fetch(&app, Method::GET, "/debug/admin/nope", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn methods_formats_and_errors_outside_a_worker() {
    let app = serve_admin(None, "127.0.0.1:4000");
    let r = fetch(&app, Method::DELETE, "/debug/admin", &[]).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let r = fetch(&app, Method::GET, "/debug/admin/shutdown", &[]).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    let r = fetch(&app, Method::PUT, "/debug/admin/reload", &[]).await;
    assert_eq!(r.headers()["allow"], "POST, GET");

    // The page renders without a supervisor, saying so.
    let r = fetch(&app, Method::GET, "/debug/admin", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8_lossy(r.body()).into_owned();
    assert!(html.contains("could not be asked"), "{html}");
    assert!(html.contains(&format!("id=\"page-pid\">{}<", std::process::id())));
    assert!(html.contains("action=\"/debug/admin/restart\""));
    assert!(html.contains("action=\"/debug/admin/shutdown\""));

    // Restart: text by default, JSON on request, the error mapped to its status.
    let r = fetch(&app, Method::POST, "/debug/admin/restart", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(r.body()).starts_with("503 Service Unavailable: no supervisor")
    );
    let r = fetch(
        &app,
        Method::POST,
        "/debug/admin/restart?newExeFilePath=relative",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"], "bad_executable");
    // Malformed query.
    let r = fetch(&app, Method::GET, "/debug/admin/restart?a=%zz", &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Cross-site form post.
    let r = fetch(
        &app,
        Method::POST,
        "/debug/admin/shutdown",
        &[("origin", "http://evil.example"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
}
