//! The rollout's HTTP client: one HTTP/1.1 request per connection to an admin URL, a `ready`
//! route or a `/metrics` route, over plain TCP or TLS (rustls), with a deadline for the whole
//! exchange and a cap on the answer's size (a host that never stops sending cannot make the
//! tool hold more than the cap).
//!
//! Whom it trusts over HTTPS: the CA certificates of `--cacert FILE` when given (only those),
//! otherwise the system's store, read with `rustls-native-certs` (on Linux the OpenSSL bundle,
//! e.g. `/etc/ssl/certs/ca-certificates.crt`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`). There is no
//! built-in list of public roots: an admin endpoint is usually served with a private CA's
//! certificate, which `--cacert` names.
//!
//! A connection per request keeps it simple and matches what the admin routes do anyway (a
//! restart's answer closes its connection, so the next request reaches the new worker).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The URL cannot be used.
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("{url}: cannot connect: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// What connect said.
        source: std::io::Error,
    },
    /// The TLS handshake failed (an untrusted certificate, a wrong name).
    #[error("{url}: TLS: {source}")]
    Tls {
        /// The URL.
        url: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// HTTP failed mid-way (the connection was closed, a malformed answer).
    #[error("{url}: {source}")]
    Protocol {
        /// The URL.
        url: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The answer's body was cut or too large.
    #[error("{url}: reading the answer: {reason}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No whole answer within the deadline.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        after: Duration,
    },
    /// `--cacert` or the system's store could not be used.
    #[error("CA certificates {from}: {reason}")]
    Roots {
        /// The file, or `the system store`.
        from: String,
        /// Why.
        reason: String,
    },
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `https`.
    pub https: bool,
    /// The host as written, without the brackets of an IPv6 literal.
    pub host: String,
    /// The port (80 or 443 when not written).
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

impl Url {
    /// Parse `http(s)://host[:port][/path]`.
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("unsupported scheme {other:?} (http or https)")),
            None => return Err("no scheme (write https://HOST:PORT/PATH)".into()),
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "user information in a URL is not used (give the token with --token-file)".into(),
            );
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// The same scheme, host and port with another path.
    pub(crate) fn with_path(&self, path: &str) -> Url {
        Url {
            path: path.to_string(),
            ..self.clone()
        }
    }

    /// `host:port` as a `Host` header says it (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is this machine: `localhost` or a loopback IP.
    pub(crate) fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// A request to send.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// `GET` or `POST`.
    pub method: Method,
    /// Where.
    pub url: &'a Url,
    /// `Authorization: Bearer …`, when set.
    pub bearer: Option<&'a str>,
    /// The `Accept` header.
    pub accept: &'static str,
    /// An urlencoded form body (`POST`).
    pub form: Option<String>,
    /// The most bytes of body taken.
    pub limit: usize,
    /// For the whole exchange: connect, handshake, request, the whole answer.
    pub timeout: Duration,
}

/// An answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a connection is: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The client: its TLS settings, made once (the CA store is read once).
pub(crate) struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for plain HTTP only.
    pub(crate) fn plain() -> Client {
        Client { tls: None }
    }

    /// A client that also speaks HTTPS, trusting the certificates in `cacert` (PEM) or, without
    /// it, the system's store.
    pub(crate) fn with_tls(cacert: Option<&Path>) -> Result<Client, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        match cacert {
            Some(path) => {
                for c in read_pem_certs(path)? {
                    roots.add(c).map_err(|e| HttpError::Roots {
                        from: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_string(), |e| e.to_string());
                    return Err(HttpError::Roots {
                        from: "the system store".into(),
                        reason: format!("{why}; name the CA with --cacert FILE"),
                    });
                }
            }
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::serve::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Roots {
                from: "rustls".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: Some(Arc::new(cfg)),
        })
    }

    /// Send one request on a new connection and read the whole answer.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, HttpError> {
        let url = call.url.to_string();
        let timeout = call.timeout;
        match tokio::time::timeout(timeout, self.exchange(call)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                url,
                after: timeout,
            }),
        }
    }

    async fn exchange(&self, call: Call<'_>) -> Result<Reply, HttpError> {
        let u = call.url;
        let url = u.to_string();
        let tcp = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|source| HttpError::Connect {
                url: url.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if u.https {
            let cfg = self.tls.clone().ok_or_else(|| HttpError::BadUrl {
                url: url.clone(),
                reason: "HTTPS is not set up for this client".into(),
            })?;
            let name = ServerName::try_from(u.host.clone()).map_err(|e| HttpError::BadUrl {
                url: url.clone(),
                reason: format!("not a host name for TLS: {e}"),
            })?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    url: url.clone(),
                    source,
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let protocol = |source| HttpError::Protocol {
            url: url.clone(),
            source,
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(protocol)?;
        // The connection is driven by its own task; it ends when the answer is read and the
        // sender dropped (or with the runtime).
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(call.method)
            .uri(u.path.as_str())
            .header(http::header::HOST, u.authority())
            .header(http::header::ACCEPT, call.accept)
            .header(
                http::header::USER_AGENT,
                concat!("apphost-rollout/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close");
        if let Some(t) = call.bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match call.form {
            Some(f) => {
                req = req.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Full::new(Bytes::from(f))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| HttpError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let resp = send.send_request(req).await.map_err(protocol)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), call.limit)
            .collect()
            .await
            .map_err(|e| HttpError::Body {
                url: url.clone(),
                reason: if e.is::<http_body_util::LengthLimitError>() {
                    format!("larger than {} bytes", call.limit)
                } else {
                    e.to_string()
                },
            })?
            .to_bytes();
        Ok(Reply {
            status,
            body: body.to_vec(),
        })
    }
}

/// The certificates of a PEM file (bounded in size, a regular file).
fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let err = |reason: String| HttpError::Roots {
        from: path.display().to_string(),
        reason,
    };
    let (text, _) =
        crate::config::file::read_regular(path, 1 << 20).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(certs)
}

/// `application/x-www-form-urlencoded` for one field.
pub(crate) fn form_field(name: &str, value: &str) -> String {
    let mut out = format!("{name}=");
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_bracketless_ipv6() {
        let u = Url::parse("https://admin.example:8443/debug/admin").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "admin.example", 8443, "/debug/admin")
        );
        assert!(!u.is_loopback());
        let u = Url::parse("http://[::1]/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 80, "/x?y=1")
        );
        assert!(u.is_loopback());
        assert_eq!(u.to_string(), "http://[::1]:80/x?y=1");
        assert_eq!(Url::parse("http://localhost:1").unwrap().path, "/");
        assert!(Url::parse("http://LOCALHOST:1/").unwrap().is_loopback());
        assert!(Url::parse("http://127.0.0.9:1/").unwrap().is_loopback());
        assert!(Url::parse("ftp://h/").unwrap_err().contains("scheme"));
        assert!(Url::parse("/run/x.sock").is_err());
        assert!(Url::parse("https://u:p@h/").unwrap_err().contains("token"));
    }

    /// A server on 127.0.0.1 that answers every connection with `answer` (then keeps writing
    /// `forever` if set, or else holds the connection open without a word).
    async fn hostile(answer: &'static [u8], forever: bool) -> Url {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(answer).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    while forever && s.write_all(&chunk).await.is_ok() {}
                    // Hold it: the client must give up by itself.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
        });
        Url::parse(&format!("http://127.0.0.1:{port}/metrics")).unwrap()
    }

    fn call(url: &Url, timeout: Duration) -> Call<'_> {
        Call {
            method: Method::GET,
            url,
            bearer: Some("t"),
            accept: "*/*",
            form: None,
            limit: 256 * 1024,
            timeout,
        }
    }

    #[tokio::test]
    async fn a_server_that_never_stops_sending_is_cut_at_the_cap() {
        let url = hostile(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", true).await;
        let e = Client::plain()
            .send(call(&url, Duration::from_secs(20)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than 262144 bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_says_nothing_is_given_up_on_at_the_deadline() {
        // Not a byte; or a head, then a body that never comes.
        for answer in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            let url = hostile(answer, false).await;
            let started = std::time::Instant::now();
            let e = Client::plain()
                .send(call(&url, Duration::from_millis(200)))
                .await
                .unwrap_err();
            assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
            assert!(started.elapsed() >= Duration::from_millis(200));
        }
        let url = hostile(b"", false).await;
        // And a plain client asked for HTTPS says so rather than sending in clear text.
        let tls = Url::parse(&url.to_string().replace("http://", "https://")).unwrap();
        let e = Client::plain()
            .send(call(&tls, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("HTTPS is not set up"), "{e}");
    }

    #[test]
    fn form_fields_are_percent_encoded() {
        assert_eq!(
            form_field("newExeFilePath", "/opt/app v2/bin&x=1"),
            "newExeFilePath=/opt/app%20v2/bin%26x%3D1"
        );
    }
}
