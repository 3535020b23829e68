//! The static-file handler's unit tests (moved out of `static_files.rs` to keep it short).

use std::fs;
use std::os::unix::fs::symlink;

use super::*;
use crate::config::Pos;
use crate::handlers::test_util::*;

/// A served tree and a secret next to it:
/// `root/{index.html, a.txt, img.PNG, sub/b.css, empty/, inlink -> a.txt,
/// link -> ../outside/secret.txt, outdir -> ../outside}`, `outside/secret.txt`.
struct Tree {
    tmp: tempfile::TempDir,
    files: StaticFiles,
}

fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(root.join("index.html"), "<h1>home</h1>\n").unwrap();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("img.PNG"), [0x89, b'P', b'N', b'G']).unwrap();
    fs::write(root.join("sub/b.css"), "b{}\n").unwrap();
    fs::write(outside.join("secret.txt"), "secret\n").unwrap();
    symlink("a.txt", root.join("inlink")).unwrap();
    symlink("../outside/secret.txt", root.join("link")).unwrap();
    symlink("../outside", root.join("outdir")).unwrap();
    let p = params(tmp.path().to_path_buf(), vec![("dir", s("root"))]);
    let files = StaticFiles::from_params(&p).unwrap();
    Tree { tmp, files }
}

/// GET `rest` as a wildcard route's match.
async fn get(t: &Tree, rest: &str) -> Response {
    send(t, Method::GET, rest, &[]).await
}

async fn send(t: &Tree, method: Method, rest: &str, headers: &[(&str, &str)]) -> Response {
    let mut r = req(method, "/files/x");
    for (k, v) in headers {
        r.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r.extensions_mut().insert(RouteMatch {
        pattern: "/files/*path".into(),
        rest: Some(rest.to_string()),
    });
    t.files.respond(r.into_parts().0).await
}

#[tokio::test]
async fn serves_files_with_type_length_and_date() {
    let t = tree();
    let r = get(&t, "a.txt").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["content-length"], "6");
    assert!(
        r.headers()["last-modified"]
            .to_str()
            .unwrap()
            .ends_with(" GMT")
    );
    assert_eq!(body(r).await, "alpha\n");

    let r = get(&t, "sub/b.css").await;
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    let r = get(&t, "img.PNG").await;
    assert_eq!(r.headers()["content-type"], "image/png");
    let r = get(&t, "inlink").await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a symlink inside the root is fine"
    );
    assert_eq!(body(r).await, "alpha\n");
}

#[tokio::test]
async fn percent_decoding() {
    let t = tree();
    fs::write(t.tmp.path().join("root/with space.txt"), "sp\n").unwrap();
    let r = get(&t, "with%20space.txt").await;
    assert_eq!(body(r).await, "sp\n");
    assert_eq!(get(&t, "a%2etxt").await.status(), StatusCode::OK);
    assert_eq!(get(&t, "a%zz").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(get(&t, "a%2").await.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn escapes_are_refused() {
    let t = tree();
    for rest in [
        "../outside/secret.txt",
        "%2e%2e/outside/secret.txt",
        "%2E%2E%2Foutside%2Fsecret.txt",
        "sub/../../outside/secret.txt",
        "/etc/passwd",
        "/",
        "%2Fetc%2Fpasswd",
        "a.txt%00.html",
        "link",
        "outdir/secret.txt",
        "a.txt/",
        "missing.txt",
    ] {
        let r = get(&t, rest).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{rest}");
        assert_eq!(body(r).await, "404 page not found\n", "{rest}");
    }
}

#[tokio::test]
async fn without_a_route_match_the_whole_path_is_used() {
    let t = tree();
    let r = t
        .files
        .respond(req(Method::GET, "/a.txt").into_parts().0)
        .await;
    assert_eq!(body(r).await, "alpha\n");
    let r = t
        .files
        .respond(req(Method::GET, "/../etc/passwd").into_parts().0)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn exact_route_serves_the_index() {
    let t = tree();
    let mut r = req(Method::GET, "/site");
    r.extensions_mut().insert(RouteMatch {
        pattern: "/site".into(),
        rest: None,
    });
    let r = t.files.respond(r.into_parts().0).await;
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(body(r).await, "<h1>home</h1>\n");
}

#[tokio::test]
async fn directories_serve_their_index_or_404() {
    let t = tree();
    for rest in ["", ".", "./"] {
        let r = get(&t, rest).await;
        assert_eq!(r.status(), StatusCode::OK, "{rest:?}");
        assert_eq!(body(r).await, "<h1>home</h1>\n");
    }
    assert_eq!(get(&t, "empty").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&t, "sub/").await.status(), StatusCode::NOT_FOUND);
    // A custom index name.
    let p = params(
        t.tmp.path().to_path_buf(),
        vec![("dir", s("root/sub")), ("index", s("b.css"))],
    );
    let files = StaticFiles::from_params(&p).unwrap();
    let r = files.respond(req(Method::GET, "/").into_parts().0).await;
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(body(r).await, "b{}\n");
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let t = tree();
    let r = send(&t, Method::HEAD, "a.txt", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "6");
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body(r).await, "");
}

#[tokio::test]
async fn if_modified_since() {
    let t = tree();
    let r = get(&t, "a.txt").await;
    let lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    let r = send(&t, Method::GET, "a.txt", &[("if-modified-since", &lm)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["last-modified"], lm.as_str());
    assert_eq!(body(r).await, "");
    let later = format_http_date(parse_http_date(&lm).unwrap() + 3600);
    let r = send(&t, Method::HEAD, "a.txt", &[("if-modified-since", &later)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";
    let r = send(&t, Method::GET, "a.txt", &[("if-modified-since", old)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(
        &t,
        Method::GET,
        "a.txt",
        &[("if-modified-since", "yesterday")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let both = [
        ("if-modified-since", lm.as_str()),
        ("if-none-match", "\"x\""),
    ];
    let r = send(&t, Method::GET, "a.txt", &both).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn large_files_are_streamed() {
    let t = tree();
    let len = WHOLE_FILE_LIMIT as usize + CHUNK + 123;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    fs::write(t.tmp.path().join("root/big.wasm"), &data).unwrap();
    let r = get(&t, "big.wasm").await;
    assert_eq!(r.headers()["content-type"], "application/wasm");
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(
        http_body::Body::size_hint(r.body()).exact(),
        Some(len as u64)
    );
    assert_eq!(body(r).await, data);
}

#[test]
fn dir_param_errors() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("file"), "x").unwrap();
    let base = tmp.path().to_path_buf();

    let err = StaticFiles::from_params(&params(base.clone(), vec![]))
        .err()
        .unwrap();
    assert!(err.message.contains("missing `dir`"), "{err}");

    let mut missing = s("nope");
    missing.pos = Pos::new(9, 14);
    let err = StaticFiles::from_params(&params(base.clone(), vec![("dir", missing)]))
        .err()
        .unwrap();
    assert_eq!(err.pos, Some(Pos::new(9, 14)));
    assert_eq!(err.key_path, "servers.s.routes./r.dir");
    assert!(err.message.contains("No such file or directory"), "{err}");

    let err = StaticFiles::from_params(&params(base.clone(), vec![("dir", s("file"))]))
        .err()
        .unwrap();
    assert!(err.message.ends_with("not a directory"), "{err}");

    for bad in ["", "..", "a/b"] {
        let p = params(base.clone(), vec![("dir", s(".")), ("index", s(bad))]);
        let err = StaticFiles::from_params(&p).err().unwrap();
        assert_eq!(err.key_path, "servers.s.routes./r.index", "{bad:?}");
    }
}

#[test]
fn content_types() {
    assert_eq!(
        content_type(Path::new("a.JS")),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(content_type(Path::new("a.woff2")), "font/woff2");
    assert_eq!(content_type(Path::new("a.jpeg")), "image/jpeg");
    assert_eq!(
        content_type(Path::new("Makefile")),
        "application/octet-stream"
    );
    assert_eq!(
        content_type(Path::new("a.tar.gz")),
        "application/octet-stream"
    );
}

#[test]
fn relative_paths() {
    assert_eq!(
        relative_path("a//./b/").unwrap(),
        (PathBuf::from("a/b"), true)
    );
    assert_eq!(relative_path("").unwrap(), (PathBuf::new(), false));
    assert_eq!(relative_path("..").unwrap_err(), StatusCode::NOT_FOUND);
    assert_eq!(
        relative_path("a/%2e%2E").unwrap_err(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        relative_path("%ff").unwrap(),
        (PathBuf::from(OsStr::from_bytes(&[0xff])), false)
    );
}
