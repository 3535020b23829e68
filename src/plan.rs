//! One plan from a config to running servers: each server's route table (its configured routes
//! and, with `admin:`, the admin routes), its listeners and its TLS. The worker builds it and
//! serves it; `apphost check` (and `run`, before it starts anything) builds the same plan and
//! prints it, so what `check` shows is what `run` serves.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, ListenAddr, ReadinessConfig};
use crate::handler::Registry;
use crate::ops::Link;
use crate::routes::RouteTable;
use crate::serve::tls::{self, CertStore, TlsError};

/// Why a config cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    /// A route, a handler's params, or a TLS pair (with file, line and column).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS settings cannot be made from the pair.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Everything a generation serves, built from its config.
pub(crate) struct Plan {
    /// One entry per server, in config order.
    pub(crate) servers: Vec<ServerPlan>,
}

/// One server of the plan.
pub(crate) struct ServerPlan {
    /// Its name.
    pub(crate) name: String,
    /// Its routes, the admin routes included.
    pub(crate) routes: Arc<RouteTable>,
    /// Its plain HTTP listeners.
    pub(crate) http: Vec<ListenAddr>,
    /// Its HTTPS listeners and certificate.
    pub(crate) https: Option<HttpsPlan>,
    /// `admin {path}  ({who may use it})`, for the report.
    admin: Option<String>,
    /// Its readiness request, answered before the worker reports ready.
    pub(crate) readiness: Option<ReadinessConfig>,
    /// The permission bits of its Unix sockets.
    pub(crate) unix_mode: Option<u32>,
    /// Whether its connections start with a PROXY protocol header.
    pub(crate) proxy_protocol: bool,
    /// Whether its TCP listeners defer `accept` until a connection's first bytes arrive.
    pub(crate) defer_accept: bool,
    /// Its `max_connections`.
    pub(crate) max_connections: usize,
}

/// The HTTPS side of a server.
pub(crate) struct HttpsPlan {
    /// Its listeners.
    pub(crate) addresses: Vec<ListenAddr>,
    /// The certificate chain file.
    pub(crate) cert: PathBuf,
    /// The key file.
    pub(crate) key: PathBuf,
    /// The loaded pair (reloaded in place on renewal).
    pub(crate) store: Arc<CertStore>,
    /// The TLS acceptor the listeners use.
    pub(crate) acceptor: TlsAcceptor,
}

impl Plan {
    /// Build every server's routes (handlers' factories run here, once) and TLS. `link` is the
    /// worker's way to its supervisor, for the admin routes (`None` for `check`: they are built
    /// and listed, never called).
    pub(crate) fn build(
        config: &Config,
        registry: &Registry,
        link: Option<&Link>,
    ) -> Result<Plan, PlanError> {
        let mut servers = Vec::with_capacity(config.servers.len());
        for server in &config.servers {
            let mut table = RouteTable::build(server, registry)?;
            // Admin routes (src/admin): only for a server whose config has `admin:`. Also
            // warns when an admin without a token listens beyond loopback.
            let admin = server.admin.as_ref().map(|a| {
                crate::admin::install(&mut table, config, server, a, link.cloned());
                let auth = if a.token.is_some() {
                    "bearer token"
                } else {
                    "loopback clients only"
                };
                format!("admin {}  ({auth})", a.path)
            });
            // Metrics: every route of every server counts, in the worker's tally.
            if let Some(t) = link.and_then(Link::tally) {
                table.count_into(t.server(&server.name));
            }
            let https = match (&server.https, tls::load_for_server(config, server)?) {
                (Some(h), Some(store)) => {
                    let acceptor = TlsAcceptor::from(store.server_config()?);
                    Some(HttpsPlan {
                        addresses: h.addresses.clone(),
                        cert: h.cert.clone(),
                        key: h.key.clone(),
                        store,
                        acceptor,
                    })
                }
                _ => None,
            };
            servers.push(ServerPlan {
                name: server.name.clone(),
                routes: Arc::new(table),
                http: server.http.clone(),
                https,
                admin,
                readiness: server.readiness.clone(),
                unix_mode: server.unix_mode,
                proxy_protocol: server.proxy_protocol,
                defer_accept: server.defer_accept,
                max_connections: server.max_connections,
            });
        }
        Ok(Plan { servers })
    }

    /// What `apphost check` prints: the settings, then each server's listeners, admin and
    /// routes, then `ok`.
    pub(crate) fn report(&self, config: &Config) -> String {
        use crate::config::duration::format_duration as d;
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "config: {}", config.source);
        let _ = writeln!(
            out,
            "graceful: {}  graceful_timeout: {}  shutdown_timeout: {}  keepalive_grace: {}",
            config.graceful,
            d(config.graceful_timeout),
            d(config.shutdown_timeout),
            d(config.keepalive_grace)
        );
        let _ = writeln!(
            out,
            "header_read_timeout: {}  idle_timeout: {}  send_timeout: {}  http2_max_concurrent_streams: {}",
            d(config.header_read_timeout),
            d(config.idle_timeout),
            d(config.send_timeout),
            config.http2_max_concurrent_streams
        );
        if let Some(r) = &config.recycle {
            let mut parts = Vec::new();
            if let Some(n) = r.max_requests {
                parts.push(format!("max_requests: {n}"));
            }
            if let Some(m) = r.max_memory {
                parts.push(format!("max_memory: {m} bytes"));
            }
            if let Some(a) = r.max_age {
                parts.push(format!("max_age: {}", d(a)));
            }
            parts.push(format!("jitter: {}%", r.jitter * 100.0));
            let _ = writeln!(out, "recycle: {}", parts.join("  "));
        }
        for s in &self.servers {
            let _ = writeln!(out, "server {}:", s.name);
            if s.proxy_protocol {
                let _ = writeln!(
                    out,
                    "  proxy_protocol: on (every connection starts with a PROXY header)"
                );
            }
            if !s.defer_accept {
                let _ = writeln!(
                    out,
                    "  defer_accept: off (TCP connections are accepted before they send anything)"
                );
            }
            let server = config.servers.iter().find(|c| c.name == s.name);
            if let Some(c) = server.filter(|c| {
                c.max_request_body.is_some()
                    || c.max_connections != crate::config::guards::DEFAULT_MAX_CONNECTIONS
            }) {
                let body = c
                    .max_request_body
                    .map_or("none".to_string(), |b| format!("{b} bytes"));
                let _ = writeln!(
                    out,
                    "  max_connections: {}  max_request_body: {body}",
                    c.max_connections
                );
            }
            for a in &s.http {
                let _ = writeln!(out, "  listen http://{a}");
            }
            if let Some(h) = &s.https {
                for a in &h.addresses {
                    let _ = writeln!(out, "  listen https://{a}  (cert {})", h.cert.display());
                }
            }
            if let Some(a) = &s.admin {
                let _ = writeln!(out, "  {a}");
            }
            if let Some(a) = config
                .servers
                .iter()
                .find(|c| c.name == s.name)
                .and_then(|c| c.access_log.as_ref())
            {
                let format = match a.format {
                    crate::config::AccessLogFormat::Combined => "combined",
                    crate::config::AccessLogFormat::Json => "json",
                };
                let echo = if a.echo_id {
                    ""
                } else {
                    ", ids not returned in responses"
                };
                let _ = writeln!(out, "  access_log {} ({format}{echo})", a.target);
            }
            let default_body = server.and_then(|c| c.max_request_body);
            for (pattern, handler, g) in s.routes.routes_with_guards() {
                let mut extra = Vec::new();
                if let Some(t) = g.timeout {
                    extra.push(format!("timeout {}", d(t)));
                }
                if g.max_body != default_body {
                    let b = g
                        .max_body
                        .map_or("none".to_string(), |b| format!("{b} bytes"));
                    extra.push(format!("max_request_body {b}"));
                }
                if extra.is_empty() {
                    let _ = writeln!(out, "  route {pattern} -> {handler}");
                } else {
                    let _ = writeln!(
                        out,
                        "  route {pattern} -> {handler}  ({})",
                        extra.join(", ")
                    );
                }
            }
        }
        let _ = writeln!(out, "ok");
        out
    }
}
