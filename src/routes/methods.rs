//! A route's `methods`: read from its config (a string or a list, checked against HTTP's and
//! WebDAV's methods, with a did-you-mean), normalised (`GET` implies `HEAD`), and checked per
//! request, with the `Allow` value for the `405`.

use http::{HeaderValue, Method};

use crate::config::tree::Value;
use crate::config::{ConfigError, Params};

/// A route's `methods`, and the `Allow` header value listing them.
pub(super) struct Allowed {
    methods: Box<[Method]>,
    pub(super) allow: HeaderValue,
}

impl Allowed {
    /// Normalise a method list: drop duplicates, add `HEAD` when `GET` is listed.
    pub(super) fn new(methods: Vec<Method>) -> Allowed {
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

    pub(super) fn allows(&self, m: &Method) -> bool {
        self.methods.iter().any(|x| x == m)
    }
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

pub(super) fn parse_methods(params: &Params) -> Result<Option<Vec<Method>>, ConfigError> {
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
