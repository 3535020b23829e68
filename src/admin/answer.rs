//! How the admin routes answer: the format a client asked for (text, HTML or JSON), the status
//! code and error code of each failure, and the headers every admin answer carries.

use http::header::{ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use super::{auth, form};
use crate::body::Body;
use crate::channel::OpError;
use crate::handler::Response;

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Html,
    Json,
}

pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// See the module doc: `?format=`, then `Accept: application/json`, then `Accept: text/html`,
/// else text. A form post is not enough for HTML: a browser submitting the page's form sends
/// `Accept: text/html`, `curl -d` sends `*/*` and reads the answer as text.
pub(crate) fn negotiate(headers: &HeaderMap, format: Option<&str>) -> Format {
    match format.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => return Format::Json,
        Some("html") => return Format::Html,
        Some("text" | "txt" | "plain") => return Format::Text,
        _ => {}
    }
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") {
        Format::Json
    } else if accept.contains("text/html") {
        Format::Html
    } else {
        Format::Text
    }
}

/// The status code an operation's error is answered with.
pub(crate) fn status_for(e: &OpError) -> StatusCode {
    match e {
        OpError::BadExecutable(_) => StatusCode::BAD_REQUEST,
        OpError::Forbidden(_) => StatusCode::FORBIDDEN,
        OpError::Busy(_) => StatusCode::CONFLICT,
        OpError::Failed(_) => StatusCode::BAD_GATEWAY,
        OpError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        OpError::ShuttingDown | OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub(crate) fn op_code(e: &OpError) -> &'static str {
    match e {
        OpError::Busy(_) => "busy",
        OpError::ShuttingDown => "shutting_down",
        OpError::BadExecutable(_) => "bad_executable",
        OpError::Failed(_) => "failed",
        OpError::Timeout(_) => "timeout",
        OpError::Forbidden(_) => "forbidden",
        OpError::Unavailable(_) => "unavailable",
    }
}

/// Why an admin request was not carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// Authentication or client address.
    #[error(transparent)]
    Denied(#[from] auth::Denied),
    /// A cross-site browser request.
    #[error("{0}")]
    CrossSite(String),
    /// No such endpoint.
    #[error("no such admin route")]
    NotFound,
    /// The endpoint does not take this method.
    #[error("method not allowed (allowed: {0})")]
    Method(&'static str),
    /// Unreadable query or form.
    #[error(transparent)]
    Form(#[from] form::FormError),
    /// The operation failed or was refused.
    #[error(transparent)]
    Op(#[from] OpError),
}

impl AdminError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AdminError::Denied(auth::Denied::NotLoopback(_) | auth::Denied::ForeignHost(_))
            | AdminError::CrossSite(_) => StatusCode::FORBIDDEN,
            AdminError::Denied(_) => StatusCode::UNAUTHORIZED,
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Form(form::FormError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Form(_) => StatusCode::BAD_REQUEST,
            AdminError::Op(e) => status_for(e),
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            AdminError::Denied(auth::Denied::NotLoopback(_) | auth::Denied::ForeignHost(_))
            | AdminError::CrossSite(_) => "forbidden",
            AdminError::Denied(_) => "unauthorized",
            AdminError::NotFound => "not_found",
            AdminError::Method(_) => "method_not_allowed",
            AdminError::Form(form::FormError::TooLarge) => "payload_too_large",
            AdminError::Form(_) => "bad_request",
            AdminError::Op(e) => op_code(e),
        }
    }
}

pub(crate) fn json_body(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// A response in `fmt` with the admin's headers: never cached, no sniffing; HTML may only use
/// its own inline style and script, post forms to itself, and not be framed.
pub(crate) fn respond(status: StatusCode, fmt: Format, body: String) -> Response {
    let ct = match fmt {
        Format::Json => "application/json",
        Format::Html => "text/html; charset=utf-8",
        Format::Text => "text/plain; charset=utf-8",
    };
    let mut r = http::Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if fmt == Format::Html {
        h.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        // Not `no-referrer`: with it, browsers send `Origin: null` on the page's own forms.
        h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    }
    r
}

/// Ask an HTTP/1 client to close the connection after this response (HTTP/2 has no such header).
pub(crate) fn closing(mut r: Response, http1: bool) -> Response {
    if http1 {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
