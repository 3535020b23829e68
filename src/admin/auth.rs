//! Who may use the admin routes: a bearer token when one is configured, otherwise loopback
//! clients that addressed the request to this machine by a loopback name; and, for the actions
//! that change something, no cross-site browser requests.
//!
//! Why the name matters without a token (DNS rebinding): a web page on `evil.example` can make
//! its name resolve to `127.0.0.1` a moment after it loaded; the user's browser then sends the
//! page's requests to the admin over loopback, with `Host: evil.example` and a matching `Origin`,
//! so the client address and a same-origin check both pass. The attacker cannot choose the
//! `Host` the browser sends, so only `localhost`, a loopback IP literal, or a name the operator
//! listed in `admin.allowed_hosts` is accepted. With a token none of this is needed: the page
//! does not know it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST, ORIGIN, REFERER};

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
    /// No token is configured and the request names another host than this machine (what a
    /// DNS-rebinding page sends).
    #[error(
        "no admin token is configured, so only requests addressed to localhost or a loopback \
         address are served (Host: {0}); list the name in admin.allowed_hosts or set a token"
    )]
    ForeignHost(String),
}

/// Whether `ip` is a loopback address: `127.0.0.0/8`, `::1`, or an IPv4-mapped `::ffff:127.x.y.z`
/// (how a dual-stack socket sees an IPv4 loopback client).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
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

/// The host part of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`), without the port
/// and the brackets.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether `authority` (a `Host` header or a URI's authority) names this machine the way a
/// DNS-rebinding page cannot: `localhost` (any port; a trailing dot allowed), a loopback IP
/// literal, or one of `allowed` (names compared without case and without the port).
pub(crate) fn local_host(authority: &str, allowed: &[String]) -> bool {
    let host = host_part(authority.trim());
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_loopback(ip);
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Who is asking: the request's headers, the authority of its URI (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1 target) and the client's address.
pub(crate) struct Asker<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The URI's authority, if it has one.
    pub authority: Option<&'a str>,
    /// The peer address, if known.
    pub client: Option<SocketAddr>,
}

/// Let the request in, or say why not: with `token`, the request must carry it as a bearer
/// token; without, the client must be a loopback address and every host the request names
/// (its `Host` header, its URI's authority) must pass [`local_host`] with `allowed_hosts`. A
/// request that names no host at all (HTTP/1.0 without `Host`) is not from a browser and passes.
pub(crate) fn authorize(
    token: Option<&str>,
    allowed_hosts: &[String],
    asker: &Asker<'_>,
) -> Result<(), Denied> {
    if let Some(t) = token {
        return match bearer(asker.headers) {
            None => Err(Denied::MissingToken),
            Some(given) if constant_time_eq(given, t.as_bytes()) => Ok(()),
            Some(_) => Err(Denied::WrongToken),
        };
    }
    match asker.client {
        Some(a) if is_loopback(a.ip()) => {}
        Some(a) => return Err(Denied::NotLoopback(a.to_string())),
        None => return Err(Denied::NotLoopback("unknown".into())),
    }
    let host = asker
        .headers
        .get_all(HOST)
        .iter()
        .map(|h| h.to_str().unwrap_or("?"));
    for named in host.chain(asker.authority) {
        if !local_host(named, allowed_hosts) {
            return Err(Denied::ForeignHost(named.chars().take(100).collect()));
        }
    }
    Ok(())
}

/// The `host[:port]` of an absolute URL (`scheme://host:port/path?q#f`), if it is one.
fn url_authority(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// For restart and shutdown: refuse what a browser marks as coming from another site (a page
/// elsewhere posting a form or loading an image at the admin URL, such as GoFrame-style
/// `GET …/restart` links), since a loopback-only admin without a token would otherwise obey it.
/// Requests without these headers (curl, scripts) pass.
///
/// Browsers that send `Sec-Fetch-Site` are judged by it alone: `same-origin` and `none` (typed
/// by the user) pass, anything else is refused. Without it (older browsers), an `Origin` or a
/// `Referer` whose host and port differ from the `Host` the request was sent to, or an opaque
/// `null` `Origin`, is refused.
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
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority);
    let same = |url: &str| match (url_authority(url), host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    };
    for (name, header) in [("Origin", ORIGIN), ("Referer", REFERER)] {
        if let Some(v) = headers.get(&header) {
            let v = v.to_str().unwrap_or("null");
            if !same(v) {
                let shown: String = v.chars().take(100).collect();
                return Some(format!("cross-site request refused ({name}: {shown})"));
            }
        }
    }
    None
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

    fn ask<'a>(h: &'a HeaderMap, client: Option<&str>) -> Asker<'a> {
        Asker {
            headers: h,
            authority: None,
            client: client.map(|c| c.parse().unwrap()),
        }
    }

    #[test]
    fn without_token_only_loopback_clients() {
        let h = HeaderMap::new();
        let local = Some("127.0.0.1:5000");
        assert_eq!(authorize(None, &[], &ask(&h, local)), Ok(()));
        assert_eq!(authorize(None, &[], &ask(&h, Some("[::1]:5000"))), Ok(()));
        assert_eq!(
            authorize(None, &[], &ask(&h, Some("192.0.2.7:5000"))),
            Err(Denied::NotLoopback("192.0.2.7:5000".into()))
        );
        assert!(matches!(
            authorize(None, &[], &ask(&h, None)),
            Err(Denied::NotLoopback(_))
        ));
    }

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8199",
            "localhost.:1",
            "127.0.0.1",
            "127.0.0.1:8199",
            "127.9.9.9:80",
            "[::1]:8199",
            "[::1]",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(local_host(ok, &[]), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8199",
            "localhost.evil.example",
            "evil-localhost",
            "10.0.0.1:8199",
            "[fe80::1]:8199",
            "0.0.0.0:8199",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!local_host(no, &[]), "{no}");
        }
        let allowed = vec!["admin.internal".to_string()];
        assert!(local_host("Admin.Internal:8199", &allowed));
        assert!(!local_host("x.admin.internal", &allowed));
    }

    #[test]
    fn without_token_a_foreign_host_is_refused() {
        let local = Some("127.0.0.1:5000");
        let rebound = headers(&[("host", "evil.example:8199")]);
        assert_eq!(
            authorize(None, &[], &ask(&rebound, local)),
            Err(Denied::ForeignHost("evil.example:8199".into()))
        );
        let listed = vec!["evil.example".to_string()];
        assert_eq!(authorize(None, &listed, &ask(&rebound, local)), Ok(()));
        let fine = headers(&[("host", "localhost:8199")]);
        assert_eq!(authorize(None, &[], &ask(&fine, local)), Ok(()));
        // HTTP/2: the authority of the URI.
        let h2 = Asker {
            authority: Some("evil.example:8199"),
            ..ask(&fine, local)
        };
        assert!(matches!(
            authorize(None, &[], &h2),
            Err(Denied::ForeignHost(_))
        ));
        // With a token the host does not matter.
        let tok = headers(&[("host", "evil.example"), ("authorization", "Bearer t")]);
        assert_eq!(authorize(Some("t"), &[], &ask(&tok, local)), Ok(()));
    }

    #[test]
    fn with_token_a_bearer_header_is_required_from_anywhere() {
        let remote = Some("192.0.2.7:5000");
        let t = Some("tok en");
        let empty = HeaderMap::new();
        assert_eq!(
            authorize(t, &[], &ask(&empty, remote)),
            Err(Denied::MissingToken)
        );
        let basic = headers(&[("authorization", "Basic dG9rZW4=")]);
        assert_eq!(
            authorize(t, &[], &ask(&basic, None)),
            Err(Denied::MissingToken)
        );
        let wrong = headers(&[("authorization", "Bearer token")]);
        assert_eq!(
            authorize(t, &[], &ask(&wrong, None)),
            Err(Denied::WrongToken)
        );
        let right = headers(&[("authorization", "bearer tok en")]);
        assert_eq!(authorize(t, &[], &ask(&right, remote)), Ok(()));
        let right = headers(&[("authorization", "Bearer   tok en  ")]);
        assert_eq!(authorize(t, &[], &ask(&right, None)), Ok(()));
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
            headers(&[host, ("referer", "http://evil.example/page")]),
            headers(&[host, ("referer", "http://127.0.0.1:8200/debug/admin")]),
            headers(&[
                host,
                ("origin", "http://127.0.0.1:8199"),
                ("referer", "https://evil.example/"),
            ]),
        ] {
            assert!(cross_site(&bad, None).is_some(), "{bad:?}");
        }
        // The admin page's own links and forms.
        let own = headers(&[host, ("referer", "http://127.0.0.1:8199/debug/admin?x=1")]);
        assert_eq!(cross_site(&own, None), None);
        // HTTP/2: no Host header, the authority comes from the URI.
        let h2 = headers(&[("origin", "https://localhost:8443")]);
        assert_eq!(cross_site(&h2, Some("localhost:8443")), None);
    }
}
