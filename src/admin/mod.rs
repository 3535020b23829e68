//! The admin routes: a page and a few endpoints to see the host's state and restart or stop it
//! from a browser or `curl`, served inside the worker.
//!
//! A server gets them when its config has `admin:` (absent or `false`: no admin routes at all):
//!
//! ```yaml
//! servers:
//!   main:
//!     address: "127.0.0.1:8199"
//!     admin:
//!       path: /debug/admin          # default
//!       token_file: admin.token     # or `token: …`; without either, loopback clients only
//!       allowed_exe_dirs: [/opt/app/releases]
//!       allowed_hosts: [admin.internal]   # without a token: names besides localhost
//! ```
//!
//! # Endpoints (`{path}` is `admin.path`, default `/debug/admin`)
//!
//! | Route | Methods | Does |
//! | --- | --- | --- |
//! | `{path}` (and `{path}/`) | `GET`, `HEAD` | HTML page: supervisor and worker pids, executable, generation, uptime, servers and listeners, in-flight connections, the last restart; Restart (with an optional new executable) and Shutdown forms |
//! | `{path}/status` | `GET`, `HEAD` | the same facts as JSON: `{"version": "0.1.0", "supervisor": Status, "worker": {...}, "servers": [...], "admin": {...}}` (`apphost status --json` prints the `version` and `supervisor` part) |
//! | `{path}/metrics` | `GET`, `HEAD` | the host's metrics, Prometheus text or OpenMetrics, as the `metrics` handler answers (see `crate::observe`) |
//! | `{path}/restart` | `POST`, `GET` | restart, wait for the outcome; optional `newExeFilePath` (query or urlencoded form body) |
//! | `{path}/reload` | `POST`, `GET` | alias of `restart` |
//! | `{path}/shutdown` | `POST` | answer, then the host drains every worker and the supervisor exits 0 |
//! | `{path}/reopen-logs` | `POST` | every worker reopens its access log files (`apphost reopen-logs`; see `reopen.rs`) |
//!
//! Any other method gets `405` with `Allow`; any other path below `{path}` gets `404`.
//!
//! # Who may use them
//! - With `token` (or `token_file`): every request needs `Authorization: Bearer TOKEN`
//!   (compared in constant time), from any address. Missing or wrong: `401` with
//!   `WWW-Authenticate: Bearer realm="apphost admin"`. (A browser cannot add that header to a
//!   page load by itself; with a token the page is for clients that can.)
//! - Without: only loopback clients (`127.0.0.0/8`, `::1`) are served, others get `403`; the
//!   worker logs a warning at start when such a server listens beyond loopback. The request must
//!   also be addressed to this machine by name: a `Host` (or HTTP/2 authority) of `localhost`
//!   (any port), a loopback IP literal, or a name listed in `allowed_hosts`; any other gets
//!   `403` saying so. This defeats DNS rebinding, where a web page's own name is made to resolve
//!   to `127.0.0.1` (see `auth.rs`).
//! - Restart and shutdown also refuse requests a browser marks as cross-site (`Sec-Fetch-Site`
//!   other than `same-origin`/`none`; without that header, an `Origin` or `Referer` that is not
//!   the host asked): `403`. This holds for the `GET` restart links too. This keeps another web page from driving a loopback-only admin through the
//!   user's browser. Clients that send neither header (`curl`, scripts) are not affected.
//! - `newExeFilePath` must be absolute; with `allowed_exe_dirs` it must resolve
//!   (canonicalised, symlinks followed) to a file inside one of them, else `403`. Either way the
//!   supervisor then checks that it is an executable it can run.
//!
//! Every request is logged with the client's address (refusals as warnings; metrics scrapes at
//! debug level, as they come every few seconds).
//!
//! # Answers
//! Format: JSON when `?format=json` or `Accept` mentions `application/json`; HTML when
//! `?format=html` or when `Accept` mentions `text/html` (a browser following a link or posting
//! the page's form); plain text otherwise (`curl`, also `curl -d` posting a form).
//! `?format=text` forces text. The page is HTML unless JSON is asked for (then it is `status`).
//!
//! Restart, `200`: text `restarted: generation 3, pid 4242 (was 4100), handoff 35.2 ms
//! (graceful)`; JSON `{"ok":true,"kind":"restarted","generation":3,"pid":4242,"old_pid":4100,
//! "exe":"…","handoff_ms":35.2,"mode":"graceful"}`; HTML a result page with the new pid that
//! returns to the admin page after 3 s (the response closes its HTTP/1 connection, so the page
//! is loaded from the new worker). With `graceful: false` the answering worker must drain before
//! the new one starts, so it cannot wait for the outcome: it answers `202` (`"kind":
//! "restart_accepted"`) once the supervisor has begun the restart.
//!
//! Errors: `{"ok":false,"status":409,"error":"busy","message":"…"}` in JSON, `409 Conflict: …`
//! in text. Status codes:
//!
//! | Code | When |
//! | --- | --- |
//! | 400 | unusable executable (missing, not a regular file, not executable, not for this machine, relative path); malformed form data |
//! | 401 | token configured, missing or wrong bearer token |
//! | 403 | not loopback, or a `Host` not local (no token); `newExeFilePath` outside `allowed_exe_dirs` (the answer does not show where the path resolves); cross-site |
//! | 404 | unknown admin path |
//! | 405 | wrong method (`Allow` lists the right ones) |
//! | 409 | a restart is already under way |
//! | 413 | request body over 16 KiB |
//! | 502 | the new process failed (exit status and the end of its output in the message) |
//! | 503 | shutting down, supervisor unreachable, or a restart asked of a worker that is draining (ask again on a new connection) |
//! | 504 | the new process was not ready within `graceful_timeout` |
//!
//! The handlers go through [`crate::ops`] (the restart is asked with `via: admin` so that the
//! supervisor records who asked), the same state machine the signals and the CLI use.

mod actions;
mod answer;
mod auth;
mod form;
mod page;
mod reopen;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::channel::Op;
use crate::config::{AdminConfig, Config, ListenAddr, RoutePattern, ServerConfig};
use crate::handler::{BoxFuture, ClientAddr, Handler, Request, Response};
use crate::ops::{Link, OpError, OpReply, OpResult, Status};
use crate::routes::RouteTable;
use answer::{AdminError, Format, json_body, negotiate, respond};

/// The handler name the admin routes are listed under in [`RouteTable::patterns`].
pub(crate) const HANDLER_NAME: &str = "admin";

/// How long a page or status request waits for the supervisor's state.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// After a successful restart from a form, the result page returns to the admin page after this
/// many seconds.
const RESULT_REFRESH_SECS: u32 = 3;

/// Add the admin routes of `server` (whose config has `admin`) to its route table: the exact
/// `{path}` and the wildcard `{path}/*action`. A configured route matching the same paths is
/// replaced (with a warning). Logs a warning when the admin has no token and the server listens
/// beyond loopback.
pub(crate) fn install(
    table: &mut RouteTable,
    config: &Config,
    server: &ServerConfig,
    admin: &AdminConfig,
    link: Option<Link>,
) {
    let a = Admin::new(config, server, admin, link);
    if let Some(w) = exposure_warning(server, admin) {
        tracing::warn!("{w}");
    }
    let exact = RoutePattern::exact(&a.path);
    let wildcard = RoutePattern::wildcard(&a.base, "action");
    for (pattern, handler) in table.patterns() {
        if *pattern == exact || pattern.wildcard_prefix() == Some(a.base.as_str()) {
            tracing::warn!(
                "servers.{}: route {pattern} ({handler}) is replaced by the admin routes at {}",
                server.name,
                a.path
            );
        }
    }
    let h: Arc<dyn Handler> = Arc::new(AdminHandler(Arc::new(a)));
    table.insert(&exact, HANDLER_NAME, h.clone(), None);
    table.insert(&wildcard, HANDLER_NAME, h, None);
}

/// `http://127.0.0.1:8199`, `https://*:8443` (every interface), `http://unix:/run/app.sock`.
fn listener_label(scheme: &str, a: &ListenAddr) -> String {
    match a.port() {
        Some(port) if a.is_all_interfaces() => format!("{scheme}://*:{port}"),
        _ => format!("{scheme}://{}", a.key()),
    }
}

fn server_listeners(s: &ServerConfig) -> Vec<(&'static str, &ListenAddr)> {
    let http = s.http.iter().map(|a| ("http", a));
    let https = s
        .https
        .iter()
        .flat_map(|h| h.addresses.iter().map(|a| ("https", a)));
    http.chain(https).collect()
}

/// The warning to log at worker start, if any: an admin without a token on a server that
/// listens beyond loopback (only loopback clients will be served), or a token sent in clear text
/// over plain HTTP beyond loopback.
fn exposure_warning(server: &ServerConfig, admin: &AdminConfig) -> Option<String> {
    let exposed: Vec<(&str, &ListenAddr)> = server_listeners(server)
        .into_iter()
        .filter(|(_, a)| !a.is_loopback())
        .collect();
    let list = |v: &[(&str, &ListenAddr)]| {
        v.iter()
            .map(|(s, a)| listener_label(s, a))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if exposed.is_empty() {
        return None;
    }
    if admin.token.is_none() {
        return Some(format!(
            "servers.{}: the admin routes at {} have no token and the server listens beyond \
             loopback ({}): only loopback clients are served; set admin.token or \
             admin.token_file to let others in",
            server.name,
            admin.path,
            list(&exposed)
        ));
    }
    let plain: Vec<(&str, &ListenAddr)> =
        exposed.into_iter().filter(|(s, _)| *s == "http").collect();
    (!plain.is_empty()).then(|| {
        format!(
            "servers.{}: the admin token travels in clear text on plain HTTP beyond loopback \
             ({}); prefer HTTPS or a loopback address",
            server.name,
            list(&plain)
        )
    })
}

/// One server as the page and `status` show it.
#[derive(Debug, Clone, Serialize)]
struct ServerFacts {
    name: String,
    listeners: Vec<String>,
    admin: Option<String>,
}

/// What the admin routes of one server know, fixed when the worker loads its config.
#[derive(Debug)]
struct Admin {
    /// The server these routes belong to.
    server: String,
    /// `admin.path` as configured.
    path: String,
    /// The path without a trailing `/` (`""` when the path is `/`).
    base: String,
    token: Option<String>,
    /// `admin.allowed_hosts`: names besides `localhost` a token-less admin answers to.
    allowed_hosts: Vec<String>,
    allowed_exe_dirs: Vec<PathBuf>,
    /// `graceful` of this worker's config (the supervisor restarts the way it says).
    graceful: bool,
    servers: Vec<ServerFacts>,
    /// The way to the supervisor; `None` outside a worker (tests), where every operation is
    /// `Unavailable`.
    link: Option<Link>,
}

impl Admin {
    fn new(
        config: &Config,
        server: &ServerConfig,
        admin: &AdminConfig,
        link: Option<Link>,
    ) -> Admin {
        let servers = config
            .servers
            .iter()
            .map(|s| ServerFacts {
                name: s.name.clone(),
                listeners: server_listeners(s)
                    .into_iter()
                    .map(|(scheme, a)| listener_label(scheme, a))
                    .collect(),
                admin: s.admin.as_ref().map(|a| a.path.clone()),
            })
            .collect();
        Admin {
            server: server.name.clone(),
            path: admin.path.clone(),
            base: admin.path.trim_end_matches('/').to_string(),
            token: admin.token.clone(),
            allowed_hosts: admin.allowed_hosts.clone(),
            allowed_exe_dirs: admin.allowed_exe_dirs.clone(),
            graceful: config.graceful,
            servers,
            link,
        }
    }

    /// `{base}/{action}`.
    fn action_url(&self, action: &str) -> String {
        format!("{}/{action}", self.base)
    }

    /// Which endpoint a request path names.
    fn action(&self, path: &str) -> Option<Action> {
        let rest = path.strip_prefix(self.base.as_str())?;
        match rest {
            "" | "/" => Some(Action::Page),
            "/status" => Some(Action::Status),
            "/metrics" => Some(Action::Metrics),
            "/restart" | "/reload" => Some(Action::Restart),
            "/shutdown" => Some(Action::Shutdown),
            "/reopen-logs" => Some(Action::ReopenLogs),
            _ => None,
        }
    }
}

/// The admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Page,
    Status,
    Metrics,
    Restart,
    Shutdown,
    ReopenLogs,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Page => "page",
            Action::Status => "status",
            Action::Metrics => "metrics",
            Action::Restart => "restart",
            Action::Shutdown => "shutdown",
            Action::ReopenLogs => "reopen-logs",
        }
    }

    /// The `Allow` value.
    fn allow(self) -> &'static str {
        match self {
            Action::Page | Action::Status | Action::Metrics => "GET, HEAD",
            Action::Restart => "POST, GET",
            Action::Shutdown | Action::ReopenLogs => "POST",
        }
    }

    fn allows(self, m: &Method) -> bool {
        match self {
            Action::Page | Action::Status | Action::Metrics => {
                m == Method::GET || m == Method::HEAD
            }
            Action::Restart => m == Method::POST || m == Method::GET,
            Action::Shutdown | Action::ReopenLogs => m == Method::POST,
        }
    }
}

/// This worker's own facts.
#[derive(Debug, Clone, Serialize)]
struct WorkerFacts {
    pid: u32,
    generation: u64,
    /// Live connections of this worker (the asking one included); `None` outside a worker.
    connections: Option<usize>,
    draining: bool,
    exe: String,
}

fn worker_facts(link: Option<&Link>) -> WorkerFacts {
    let serving = link.map(Link::serving);
    WorkerFacts {
        pid: std::process::id(),
        generation: link.map_or(0, Link::generation),
        connections: serving.map(|s| s.connections()),
        draining: serving.is_some_and(|s| s.is_draining()),
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

/// What the page and `status` show.
#[derive(Debug)]
struct Snapshot {
    status: Result<Status, OpError>,
    worker: WorkerFacts,
}

/// A restart asked of a worker that is draining: a newer generation serves, and a restart asked
/// from here would be decided against a state this worker no longer shows.
fn draining_error() -> OpError {
    OpError::Unavailable(
        "this worker is draining (a newer generation serves); ask again on a new connection".into(),
    )
}

/// The supervisor's status and this worker's facts. A draining worker still relays the question
/// (its channel to the supervisor stays open until it exits): a status or page request that
/// reached it as a restart began is answered like any other, not failed.
async fn snapshot(link: Option<&Link>) -> Snapshot {
    let worker = worker_facts(link);
    let status = match tokio::time::timeout(STATUS_WAIT, ask(link, Op::Status)).await {
        Ok(Ok(OpReply::Status(s))) => Ok(s),
        Ok(Ok(other)) => Err(OpError::Unavailable(format!(
            "unexpected answer to status: {other:?}"
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(OpError::Unavailable(format!(
            "no answer within {}s",
            STATUS_WAIT.as_secs()
        ))),
    };
    Snapshot { status, worker }
}

/// Ask the supervisor for `op` through `link`; outside a worker there is nobody to ask.
async fn ask(link: Option<&Link>, op: Op) -> OpResult {
    match link {
        Some(l) => l.request(op).await,
        None => Err(OpError::Unavailable(
            "not running inside an apphost worker".into(),
        )),
    }
}

/// The admin routes' handler (one per server, shared by its two routes).
struct AdminHandler(Arc<Admin>);

impl Handler for AdminHandler {
    fn call(&self, req: Request) -> BoxFuture {
        let admin = self.0.clone();
        Box::pin(async move { admin.handle(req).await })
    }
}

/// The parts of a request the endpoints need after the body has been taken.
struct Asked {
    fmt: Format,
    client: String,
    http1: bool,
}

impl Admin {
    async fn handle(&self, req: Request) -> Response {
        // Trust is decided on the address the connection really came from, never on one a
        // PROXY header claims; the log names both.
        let client = crate::handler::real_peer(&req);
        let shown = req.extensions().get::<ClientAddr>().map(|c| c.0);
        let who = match (shown, client) {
            (Some(c), Some(real)) if c != real => format!("{c} (via {real})"),
            (_, Some(real)) => real.to_string(),
            _ => "unknown".to_string(),
        };
        let query = form::parse(req.uri().query().unwrap_or("").as_bytes());
        let fmt = negotiate(
            req.headers(),
            query.as_ref().ok().and_then(|q| form::get(q, "format")),
        );
        let action = self.action(req.uri().path());
        let name = action.map_or("unknown", Action::name);
        let method = req.method().clone();
        let asked = Asked {
            fmt,
            client: who,
            http1: req.version() < http::Version::HTTP_2,
        };
        let r = self.serve(req, action, query, client, &asked).await;
        match r {
            Ok(resp) => resp,
            Err(e) => {
                let status = e.status();
                if matches!(e, AdminError::Op(_)) {
                    tracing::warn!(client = %asked.client, server = %self.server, action = name, status = status.as_u16(), "admin: {e}");
                } else {
                    tracing::warn!(client = %asked.client, server = %self.server, action = name, %method, status = status.as_u16(), "admin: refused: {e}");
                }
                self.error_response(&asked, &e)
            }
        }
    }

    async fn serve(
        &self,
        req: Request,
        action: Option<Action>,
        query: Result<Vec<(String, String)>, form::FormError>,
        client: Option<std::net::SocketAddr>,
        asked: &Asked,
    ) -> Result<Response, AdminError> {
        let asker = auth::Asker {
            headers: req.headers(),
            authority: req.uri().authority().map(|a| a.as_str()),
            client,
        };
        auth::authorize(self.token.as_deref(), &self.allowed_hosts, &asker)?;
        let action = action.ok_or(AdminError::NotFound)?;
        if !action.allows(req.method()) {
            return Err(AdminError::Method(action.allow()));
        }
        let query = query?;
        match action {
            Action::Page => {
                tracing::info!(client = %asked.client, server = %self.server, "admin: page");
                let snap = snapshot(self.link.as_ref()).await;
                if asked.fmt == Format::Json {
                    return Ok(self.status_response(&snap));
                }
                let html = page::page(self, &snap, crate::clock::now_unix());
                Ok(respond(StatusCode::OK, Format::Html, html))
            }
            Action::Status => {
                tracing::info!(client = %asked.client, server = %self.server, "admin: status");
                Ok(self.status_response(&snapshot(self.link.as_ref()).await))
            }
            Action::Metrics => {
                // Scrapes come every few seconds: logged at debug, not info.
                tracing::debug!(client = %asked.client, server = %self.server, "admin: metrics");
                let (m, h) = (req.method(), req.headers());
                Ok(crate::observe::answer(self.link.as_ref(), m, h).await)
            }
            Action::Restart => self.restart(req, &query, asked).await,
            Action::Shutdown => self.shutdown(req, asked).await,
            Action::ReopenLogs => self.reopen_logs(req, asked).await,
        }
    }

    fn status_json(&self, snap: &Snapshot) -> Value {
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "supervisor": snap.status.as_ref().ok(),
            "worker": snap.worker,
            "servers": self.servers,
            "admin": {
                "server": self.server,
                "path": self.path,
                "auth": if self.token.is_some() { "bearer_token" } else { "loopback_only" },
                "allowed_exe_dirs": self.allowed_exe_dirs,
            },
        });
        if let Err(e) = &snap.status {
            v["supervisor_error"] = Value::String(e.to_string());
        }
        v
    }

    fn status_response(&self, snap: &Snapshot) -> Response {
        let code = if snap.status.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        respond(code, Format::Json, json_body(&self.status_json(snap)))
    }

    /// Refuse browser requests from other sites (see the module doc).
    fn same_site(req: &Request) -> Result<(), AdminError> {
        let authority = req.uri().authority().map(|a| a.as_str());
        match auth::cross_site(req.headers(), authority) {
            Some(why) => Err(AdminError::CrossSite(why)),
            None => Ok(()),
        }
    }

    fn error_response(&self, asked: &Asked, e: &AdminError) -> Response {
        let status = e.status();
        let body = match asked.fmt {
            Format::Json => json_body(&json!({
                "ok": false,
                "status": status.as_u16(),
                "error": e.code(),
                "message": e.to_string(),
            })),
            Format::Text => format!(
                "{} {}: {e}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            Format::Html => page::result(
                self,
                false,
                &format!(
                    "{} {}: {e}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
                &[],
                None,
            ),
        };
        let mut r = respond(status, asked.fmt, body);
        let h = r.headers_mut();
        match e {
            AdminError::Denied(auth::Denied::MissingToken) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"apphost admin\""),
                );
            }
            AdminError::Denied(auth::Denied::WrongToken) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"apphost admin\", error=\"invalid_token\"",
                    ),
                );
            }
            AdminError::Method(allow) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests;
