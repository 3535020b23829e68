//! The `static` handler: files below a directory.
//!
//! Params: `dir` (required; relative to the config file's directory; must be a directory when
//! the config is loaded) and `index` (default `index.html`, a plain file name).
//!
//! Which file: on a wildcard route (`/files/*path`) the wildcard's match; on an exact route the
//! directory itself (so its index); without a [`RouteMatch`] (the handler called directly) the
//! whole request path. The path is percent-decoded, then refused (`404`) if it holds a NUL, a
//! `..` segment or starts with `/`; a malformed `%` escape is `400`. The file is resolved with
//! `canonicalize` and must still be inside the (canonical) directory, so symlinks may point
//! anywhere inside it but nowhere outside. Directories serve their index file, or `404`: there
//! are no listings. Anything but a regular file is `404`.
//!
//! The answer has `Content-Type` (from the extension, by a small table; else
//! `application/octet-stream`), `Content-Length` and `Last-Modified`; `If-Modified-Since` at or
//! after the file's time gives `304` (ignored when `If-None-Match` is present, as no ETags are
//! sent). `HEAD` gets the headers alone. Files up to [`WHOLE_FILE_LIMIT`] (one chunk) are read in
//! one go; larger ones are a [`FileBody`], which reads one chunk at a time as hyper asks for it, so
//! a client that reads slowly (or not at all) holds one chunk of memory, not the file.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::io::AsyncReadExt;

use super::Respond;
use super::file_body::{CHUNK, FileBody};
use crate::body::Body;
use crate::clock::{format_http_date, parse_http_date};
use crate::config::error::io_message;
use crate::config::{ConfigError, Params};
use crate::handler::{BoxFuture, Response, RouteMatch, Wants, text};

/// The index file served for a directory when `index` is not given.
pub(crate) const DEFAULT_INDEX: &str = "index.html";

/// Files up to this size are read whole; larger ones are streamed chunk by chunk, on demand.
pub(crate) const WHOLE_FILE_LIMIT: u64 = CHUNK as u64;

/// Serves the files below a directory.
pub(crate) struct StaticFiles {
    inner: Arc<Inner>,
}

struct Inner {
    /// The directory, canonical.
    root: PathBuf,
    /// The index file name.
    index: Box<str>,
}

impl StaticFiles {
    /// Read `dir` and `index` from a route's params; `dir` must be an existing directory.
    pub(crate) fn from_params(params: &Params) -> Result<StaticFiles, ConfigError> {
        let dir = params.path("dir")?.ok_or_else(|| {
            params.error(None, "missing `dir` (the directory to serve)".to_string())
        })?;
        let dir_error =
            |what: String| params.error(Some("dir"), format!("{}: {what}", dir.display()));
        let root = match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => dir.canonicalize().map_err(|e| dir_error(io_message(&e)))?,
            Ok(_) => return Err(dir_error("not a directory".to_string())),
            Err(e) => return Err(dir_error(io_message(&e))),
        };
        let index = params.str("index")?.unwrap_or(DEFAULT_INDEX);
        if index.is_empty() || index == "." || index == ".." || index.contains(['/', '\0']) {
            return Err(params.error(
                Some("index"),
                format!("index must be a file name such as \"index.html\", not {index:?}"),
            ));
        }
        Ok(StaticFiles {
            inner: Arc::new(Inner {
                root,
                index: index.into(),
            }),
        })
    }
}

impl Respond for StaticFiles {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.serve(parts).await })
    }

    fn wants(&self) -> Wants {
        Wants {
            route_match: true,
            client_addr: false,
        }
    }
}

/// Why a file cannot be served.
type Refusal = StatusCode;

impl Inner {
    async fn serve(&self, parts: http::request::Parts) -> Response {
        let raw = match parts.extensions.get::<RouteMatch>() {
            Some(m) => m.rest.as_deref().unwrap_or(""),
            None => {
                let p = parts.uri.path();
                p.strip_prefix('/').unwrap_or(p)
            }
        };
        match self.serve_path(raw, &parts.method, &parts.headers).await {
            Ok(r) => r,
            Err(status) => refusal(status),
        }
    }

    async fn serve_path(
        &self,
        raw: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Response, Refusal> {
        let (rel, trailing_slash) = relative_path(raw)?;
        let (path, name) = self.find(&rel, trailing_slash).await?;

        let file = open_no_block(&path).await.map_err(lookup_status)?;
        let meta = file.metadata().await.map_err(lookup_status)?;
        if !meta.is_file() {
            return Err(StatusCode::NOT_FOUND);
        }
        let mtime = meta.modified().ok().and_then(unix_secs);

        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        if let Some(t) = mtime
            && let Ok(v) = HeaderValue::try_from(format_http_date(t))
        {
            h.insert(LAST_MODIFIED, v);
        }
        if (method == Method::GET || method == Method::HEAD)
            && let Some(t) = mtime
            && not_modified_since(headers, t)
        {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&name)));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));

        let len = meta.len();
        if method == Method::HEAD {
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        } else if len <= WHOLE_FILE_LIMIT {
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            if let Err(e) = file.take(WHOLE_FILE_LIMIT).read_to_end(&mut buf).await {
                tracing::warn!(path = %path.display(), error = %e, "static: read failed");
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            h.insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
            *resp.body_mut() = Body::from(buf);
        } else {
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            let file = file.into_std().await;
            *resp.body_mut() = Body::stream(FileBody::new(file, len, path.into()));
        }
        Ok(resp)
    }

    /// The file to serve for `rel`: its canonical path, and the name its type is judged by.
    async fn find(&self, rel: &Path, trailing_slash: bool) -> Result<(PathBuf, PathBuf), Refusal> {
        let requested = self.root.join(rel);
        let path = self.inside(&requested).await?;
        let meta = tokio::fs::metadata(&path).await.map_err(lookup_status)?;
        if meta.is_dir() {
            let index = self.inside(&path.join(&*self.index)).await?;
            let meta = tokio::fs::metadata(&index).await.map_err(lookup_status)?;
            if !meta.is_file() {
                return Err(StatusCode::NOT_FOUND);
            }
            return Ok((index, PathBuf::from(&*self.index)));
        }
        if !meta.is_file() || trailing_slash {
            return Err(StatusCode::NOT_FOUND);
        }
        Ok((path, requested))
    }

    /// `path` canonicalised, if it exists and is inside the root.
    async fn inside(&self, path: &Path) -> Result<PathBuf, Refusal> {
        let canonical = tokio::fs::canonicalize(path).await.map_err(lookup_status)?;
        if canonical.starts_with(&self.root) {
            Ok(canonical)
        } else {
            Err(StatusCode::NOT_FOUND)
        }
    }
}

/// Open for reading without blocking on a FIFO that may have replaced a checked regular file.
async fn open_no_block(path: &Path) -> io::Result<tokio::fs::File> {
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits();
    tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(nonblock).unwrap_or(0))
        .open(path)
        .await
}

/// Percent-decode `raw` and check it: the relative path, and whether it ended in `/`.
fn relative_path(raw: &str) -> Result<(PathBuf, bool), Refusal> {
    let bytes = percent_decode(raw).ok_or(StatusCode::BAD_REQUEST)?;
    if bytes.contains(&0) || bytes.first() == Some(&b'/') {
        return Err(StatusCode::NOT_FOUND);
    }
    let mut rel = PathBuf::new();
    for seg in bytes.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(StatusCode::NOT_FOUND),
            s => rel.push(OsStr::from_bytes(s)),
        }
    }
    Ok((rel, bytes.last() == Some(&b'/')))
}

/// Decode `%XX` escapes; `None` for a malformed one.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let esc = b.get(i + 1..i + 3)?;
            out.push(hex(esc[0])? << 4 | hex(esc[1])?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// How a failed file lookup is answered: `403` for permission denied, else `404` (the causes are
/// the client's: missing files, `ENOTDIR`, name too long, symlink loops).
fn lookup_status(e: io::Error) -> Refusal {
    if e.kind() == io::ErrorKind::PermissionDenied {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The plain-text answer for a refusal.
fn refusal(status: StatusCode) -> Response {
    let body = match status {
        StatusCode::BAD_REQUEST => "400 bad request\n",
        StatusCode::FORBIDDEN => "403 forbidden\n",
        StatusCode::NOT_FOUND => crate::handler::NOT_FOUND_BODY,
        _ => "500 internal server error\n",
    };
    text(status, body)
}

/// The content type for a file name, by extension.
fn content_type(name: &Path) -> &'static str {
    const TABLE: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("json", "application/json"),
        ("txt", "text/plain; charset=utf-8"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("svg", "image/svg+xml"),
        ("ico", "image/x-icon"),
        ("wasm", "application/wasm"),
        ("pdf", "application/pdf"),
        ("woff2", "font/woff2"),
    ];
    let ext = name.extension().and_then(OsStr::to_str).unwrap_or("");
    TABLE
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map_or("application/octet-stream", |(_, t)| t)
}

/// Whether the request's `If-Modified-Since` is at or after `mtime` (seconds since the epoch).
fn not_modified_since(headers: &HeaderMap, mtime: u64) -> bool {
    if headers.contains_key(IF_NONE_MATCH) {
        return false;
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .is_some_and(|since| mtime <= since)
}

/// Seconds since the epoch (`None` before it).
fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
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
}
