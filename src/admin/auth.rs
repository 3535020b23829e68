//! Who may use the admin routes: a bearer token when one is configured, otherwise loopback
//! clients only; and, for the actions that change something, no cross-site browser requests.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST, ORIGIN};

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    /// A token is configured and the request carries no `Authorization: Bearer …`.
    #[error("missing bearer token")]
    MissingToken,
    /// A token is configured and the request carries another one.
    #[error("wrong bearer token")]
    WrongToken,
    /// No token is configured and the client is not on this machine (or its address is unknown).
    #[error("no admin token is configured, so only loopback clients are served (client: {0})")]
    NotLoopback(String),
}

/// Whether `ip` is a loopback address: `127.0.0.0/8`, `::1`, or an IPv4-mapped `::ffff:127.x.y.z`
/// (how a dual-stack socket sees an IPv4 loopback client).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Compare two byte strings in time that depends only on their lengths, not on where they
/// differ (the length of the configured token is not a secret worth hiding).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme in any case), if there is one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Let the request in, or say why not: with `token`, the request must carry it as a bearer
/// token; without, the client must be a loopback address.
pub(crate) fn authorize(
    token: Option<&str>,
    headers: &HeaderMap,
    client: Option<SocketAddr>,
) -> Result<(), Denied> {
    match token {
        Some(t) => match bearer(headers) {
            None => Err(Denied::MissingToken),
            Some(given) if constant_time_eq(given, t.as_bytes()) => Ok(()),
            Some(_) => Err(Denied::WrongToken),
        },
        None => match client {
            Some(a) if is_loopback(a.ip()) => Ok(()),
            Some(a) => Err(Denied::NotLoopback(a.to_string())),
            None => Err(Denied::NotLoopback("unknown".into())),
        },
    }
}

/// For restart and shutdown: refuse what a browser marks as coming from another site (a page
/// elsewhere posting a form or loading an image at the admin URL), since a loopback-only admin
/// without a token would otherwise obey it. Requests without these headers (curl, scripts) pass.
///
/// Browsers that send `Sec-Fetch-Site` are judged by it alone: `same-origin` and `none` (typed
/// by the user) pass, anything else is refused. Without it (older browsers), an `Origin` whose
/// host and port differ from the `Host` the request was sent to, or an opaque `null` one, is
/// refused.
pub(crate) fn cross_site(headers: &HeaderMap, authority: Option<&str>) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
            return None;
        }
        return Some(format!(
            "cross-site request refused (Sec-Fetch-Site: {site})"
        ));
    }
    let origin = headers.get(ORIGIN)?;
    let origin = origin.to_str().unwrap_or("null");
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority);
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => None,
        _ => Some(format!("cross-site request refused (Origin: {origin})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_predicate() {
        for ok in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "10.0.0.1",
            "192.168.1.2",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "fe80::1",
            "2001:db8::1",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn without_token_only_loopback_clients() {
        let h = HeaderMap::new();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local6: SocketAddr = "[::1]:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(authorize(None, &h, Some(local)), Ok(()));
        assert_eq!(authorize(None, &h, Some(local6)), Ok(()));
        assert_eq!(
            authorize(None, &h, Some(remote)),
            Err(Denied::NotLoopback("192.0.2.7:5000".into()))
        );
        assert!(matches!(
            authorize(None, &h, None),
            Err(Denied::NotLoopback(_))
        ));
    }

    #[test]
    fn with_token_a_bearer_header_is_required_from_anywhere() {
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let t = Some("tok en");
        assert_eq!(
            authorize(t, &HeaderMap::new(), Some(remote)),
            Err(Denied::MissingToken)
        );
        let basic = headers(&[("authorization", "Basic dG9rZW4=")]);
        assert_eq!(authorize(t, &basic, None), Err(Denied::MissingToken));
        let wrong = headers(&[("authorization", "Bearer token")]);
        assert_eq!(authorize(t, &wrong, None), Err(Denied::WrongToken));
        let right = headers(&[("authorization", "bearer tok en")]);
        assert_eq!(authorize(t, &right, Some(remote)), Ok(()));
        let right = headers(&[("authorization", "Bearer   tok en  ")]);
        assert_eq!(authorize(t, &right, None), Ok(()));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let host = ("host", "127.0.0.1:8199");
        assert_eq!(cross_site(&headers(&[host]), None), None);
        let same = headers(&[
            host,
            ("origin", "http://127.0.0.1:8199"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site(&same, None), None);
        assert_eq!(
            cross_site(&headers(&[host, ("sec-fetch-site", "none")]), None),
            None
        );
        // A same-origin form under a strict referrer policy may say `Origin: null`.
        let strict = headers(&[host, ("origin", "null"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(cross_site(&strict, None), None);
        for bad in [
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[
                host,
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://127.0.0.1:8199"),
            ]),
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "http://127.0.0.1:8200")]),
            headers(&[host, ("origin", "null")]),
        ] {
            assert!(cross_site(&bad, None).is_some(), "{bad:?}");
        }
        // HTTP/2: no Host header, the authority comes from the URI.
        let h2 = headers(&[("origin", "https://localhost:8443")]);
        assert_eq!(cross_site(&h2, Some("localhost:8443")), None);
    }
}
