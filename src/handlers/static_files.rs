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
mod tests;
