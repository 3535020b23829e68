//! One target of a rollout and what can be asked of it: its status (pid, executable), a
//! restart (with an executable, waiting for the outcome), its `ready` route, and its
//! `apphost_http_requests_total` counter from `/metrics`.
//!
//! A target is either
//! - an **admin base URL** (`https://host:8443/debug/admin`): the status is `GET {base}/status`,
//!   a restart `POST {base}/restart` with `newExeFilePath`, the counter `GET {base}/metrics`,
//!   all with `Authorization: Bearer TOKEN` when a token is given; the `ready` route is
//!   `--ready-path` (default `/ready`) on the same scheme, host and port;
//! - or a **control socket** of a host on this machine: the status and the restart go over the
//!   socket as `apphost status|restart` send them; the `ready` and `metrics` routes are found in
//!   the host's config (the file its status names), as [`probes`] says.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::channel::{Op, OpError, RestartOutcome};
use crate::cli::rollout::http::{Call, Client, Url, form_field};
use crate::cli::rollout::metrics::RequestCounts;
use crate::cli::rollout::probes::{self, Probes, route_of};
use crate::config::{Config, ConfigSource};

/// The most bytes of a status or restart answer read.
const ANSWER_LIMIT: usize = 256 * 1024;
/// The most bytes of a `/metrics` answer read.
const METRICS_LIMIT: usize = 16 * 1024 * 1024;
/// How long a status, `ready` or `/metrics` request may take.
const QUICK: Duration = Duration::from_secs(10);

/// How a target is reached.
#[derive(Debug, Clone)]
enum Kind {
    /// The admin routes at this base URL (no trailing `/`).
    Admin(Url),
    /// A control socket.
    Socket(PathBuf),
}

/// A target as given on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// As given, for the table.
    pub label: String,
    kind: Kind,
}

/// What the rollout shares with every target: the HTTP client, the admin token, settings.
pub(crate) struct Ctx {
    /// The HTTP(S) client.
    pub client: Client,
    /// The admin token for URL targets (`--token-file`).
    pub token: Option<String>,
    /// `--ready-path`.
    pub ready_path: Option<String>,
    /// How long one restart may take to answer.
    pub restart_timeout: Duration,
}

/// A host's state, from its status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Facts {
    /// The serving worker.
    pub worker_pid: Option<u32>,
    /// The recorded executable.
    pub exe: String,
    /// The serving generation.
    pub generation: u64,
    /// `serving`, `restarting`, …
    pub phase: String,
    /// The config file (`<embedded default>` for none).
    pub config: String,
}

impl Target {
    /// Parse a TARGET: `http(s)://…` is an admin base URL, anything else a control socket path.
    /// Plain HTTP beyond loopback is refused unless `insecure` (the token would travel in clear
    /// text, and the answers could be forged).
    pub(crate) fn parse(text: &str, insecure: bool) -> Result<Target, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            let mut url = Url::parse(text).map_err(|e| format!("{text}: {e}"))?;
            if url.path.contains('?') {
                return Err(format!("{text}: an admin base URL has no query"));
            }
            url.path = url.path.trim_end_matches('/').to_string();
            if !url.https && !url.is_loopback() && !insecure {
                return Err(format!(
                    "{text}: plain HTTP to another machine (the admin token and the answers \
                     could be read or forged on the way); use https://, or --insecure to allow it"
                ));
            }
            Ok(Target {
                label: text.to_string(),
                kind: Kind::Admin(url),
            })
        } else if text.contains("://") {
            Err(format!(
                "{text}: a TARGET is an http(s):// admin URL or a control socket path"
            ))
        } else {
            let p = std::path::absolute(text).map_err(|e| format!("{text}: {e}"))?;
            Ok(Target {
                label: text.to_string(),
                kind: Kind::Socket(p),
            })
        }
    }

    /// Whether the two name the same host: the same socket path, or the same URL.
    pub(crate) fn same_as(&self, other: &Target) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Socket(a), Kind::Socket(b)) => a == b,
            (Kind::Admin(a), Kind::Admin(b)) => {
                a.https == b.https
                    && a.port == b.port
                    && a.host.eq_ignore_ascii_case(&b.host)
                    && a.path == b.path
            }
            _ => false,
        }
    }

    /// Whether this target is an admin URL over HTTPS.
    pub(crate) fn is_https(&self) -> bool {
        matches!(&self.kind, Kind::Admin(u) if u.https)
    }

    /// Whether this target is an admin URL (its executable paths name files on that host).
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Admin(_))
    }

    /// The host's status.
    pub(crate) async fn status(&self, ctx: &Ctx) -> Result<Facts, String> {
        match &self.kind {
            Kind::Socket(path) => {
                let v = socket_request(path, &Op::Status, QUICK).await?;
                match v.get("Ok") {
                    Some(s) => facts(s),
                    None => Err(op_error(&v)),
                }
            }
            Kind::Admin(base) => {
                let url = base.with_path(&format!("{}/status", base.path));
                let r = ctx
                    .client
                    .send(admin_call(ctx, Method::GET, &url, None, QUICK))
                    .await
                    .map_err(|e| e.to_string())?;
                let v = json_of(&url, &r.status, &r.body)?;
                if r.status != 200 {
                    return Err(admin_error(&url, r.status, &v));
                }
                match v.get("supervisor") {
                    Some(s) if !s.is_null() => facts(s),
                    _ => Err(format!(
                        "{url}: no supervisor state: {}",
                        v.get("supervisor_error")
                            .and_then(Value::as_str)
                            .unwrap_or("(no reason given)")
                    )),
                }
            }
        }
    }

    /// Restart the host, with `exe` when given, and wait for the outcome. A host with
    /// `graceful: false` answers an admin restart before it is done (its worker drains first):
    /// then its status is polled until a newer generation serves.
    pub(crate) async fn restart(
        &self,
        ctx: &Ctx,
        exe: Option<&str>,
        before: &Facts,
    ) -> Result<RestartOutcome, String> {
        match &self.kind {
            Kind::Socket(path) => {
                let op = Op::Restart {
                    exe: exe.map(str::to_string),
                    via: Some("cli".into()),
                };
                let v = socket_request(path, &op, ctx.restart_timeout).await?;
                match v.get("Ok") {
                    Some(o) => serde_json::from_value::<RestartOutcome>(o.clone())
                        .map_err(|e| format!("{}: unexpected answer: {e}: {o}", path.display())),
                    None => Err(op_error(&v)),
                }
            }
            Kind::Admin(base) => {
                let url = base.with_path(&format!("{}/restart", base.path));
                let form = exe.map(|e| form_field("newExeFilePath", e));
                let started = Instant::now();
                let r = ctx
                    .client
                    .send(admin_call(
                        ctx,
                        Method::POST,
                        &url,
                        form,
                        ctx.restart_timeout,
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                let v = json_of(&url, &r.status, &r.body)?;
                match r.status {
                    200 => serde_json::from_value::<RestartOutcome>(v.clone())
                        .map_err(|e| format!("{url}: unexpected answer: {e}: {v}")),
                    202 => self.wait_full_restart(ctx, before, started).await,
                    s => Err(admin_error(&url, s, &v)),
                }
            }
        }
    }

    /// After a `202` (a full restart under way), poll the status until a newer generation
    /// serves, within the restart timeout.
    async fn wait_full_restart(
        &self,
        ctx: &Ctx,
        before: &Facts,
        started: Instant,
    ) -> Result<RestartOutcome, String> {
        let deadline = started + ctx.restart_timeout;
        loop {
            // The host is between workers for a while: errors are expected until it is back.
            if let Ok(f) = self.status(ctx).await
                && f.generation > before.generation
                && f.phase == "serving"
                && let Some(pid) = f.worker_pid
            {
                return Ok(RestartOutcome {
                    generation: f.generation,
                    pid,
                    old_pid: before.worker_pid,
                    exe: f.exe,
                    handoff_ms: started.elapsed().as_secs_f64() * 1000.0,
                    mode: "full".into(),
                });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "full restart: no newer generation served within {:?}",
                    ctx.restart_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where this target's `ready` and `/metrics` routes are (see the module doc).
    pub(crate) fn probes(&self, ctx: &Ctx, facts: &Facts) -> Result<Probes, String> {
        match &self.kind {
            Kind::Admin(base) => {
                let ready = ctx.ready_path.as_deref().unwrap_or("/ready");
                Ok(Probes {
                    ready: base.with_path(ready),
                    metrics: Some((
                        base.with_path(&format!("{}/metrics", base.path)),
                        ctx.token.clone(),
                    )),
                    skip_routes: vec![route_of(ready)],
                    skip_prefix: Some(base.path.clone()),
                })
            }
            Kind::Socket(_) => {
                let config = if facts.config == ConfigSource::Embedded.to_string() {
                    Config::embedded()
                } else {
                    Config::load(Path::new(&facts.config))
                }
                .map_err(|e| format!("reading the host's config: {e}"))?;
                probes::from_config(&config, ctx.ready_path.as_deref())
            }
        }
    }

    /// Whether the `ready` route answers 2xx; `Err` says what it answered instead.
    pub(crate) async fn ready(&self, ctx: &Ctx, p: &Probes) -> Result<(), String> {
        let r = ctx
            .client
            .send(Call {
                method: Method::GET,
                url: &p.ready,
                bearer: None,
                accept: "*/*",
                form: None,
                limit: ANSWER_LIMIT,
                timeout: QUICK,
            })
            .await
            .map_err(|e| format!("ready: {e}"))?;
        if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(format!(
                "{} answered {}: {}",
                p.ready,
                r.status,
                r.text().trim().chars().take(200).collect::<String>()
            ))
        }
    }

    /// The counter, now.
    pub(crate) async fn scrape(&self, ctx: &Ctx, p: &Probes) -> Result<RequestCounts, String> {
        let Some((url, bearer)) = &p.metrics else {
            return Err(
                "no metrics route: add `\"/metrics\": metrics` to a server's routes, or \
                        admin routes (whose {path}/metrics serves them)"
                    .into(),
            );
        };
        let r = ctx
            .client
            .send(Call {
                method: Method::GET,
                url,
                bearer: bearer.as_deref(),
                accept: "text/plain;version=0.0.4",
                form: None,
                limit: METRICS_LIMIT,
                timeout: QUICK,
            })
            .await
            .map_err(|e| format!("metrics: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "{url} answered {}: {}",
                r.status,
                r.text().trim().chars().take(200).collect::<String>()
            ));
        }
        RequestCounts::parse(&r.text()).map_err(|e| format!("{url}: {e}"))
    }
}

/// An admin request: JSON asked for, the token when there is one.
fn admin_call<'a>(
    ctx: &'a Ctx,
    method: Method,
    url: &'a Url,
    form: Option<String>,
    timeout: Duration,
) -> Call<'a> {
    Call {
        method,
        url,
        bearer: ctx.token.as_deref(),
        accept: "application/json",
        form,
        limit: ANSWER_LIMIT,
        timeout,
    }
}

/// Parse an admin answer's JSON (every answer asked with `Accept: application/json` is JSON;
/// anything else is a proxy or another server).
fn json_of(url: &Url, status: &u16, body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|_| {
        format!(
            "{url} answered {status} without JSON: {}",
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

/// An admin error answer: `{"ok":false,"status":409,"error":"busy","message":"…"}`.
fn admin_error(url: &Url, status: u16, v: &Value) -> String {
    let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
    let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
    format!("{url} answered {status} ({code}): {msg}")
}

/// A control socket error answer: `{"Err":{"error":"busy","reason":"…"}}`.
fn op_error(v: &Value) -> String {
    match v
        .get("Err")
        .and_then(|e| serde_json::from_value::<OpError>(e.clone()).ok())
    {
        Some(e) => e.to_string(),
        None => format!("unexpected answer: {v}"),
    }
}

/// The facts of a status object (`Status`'s fields; unknown ones are ignored, so a newer or
/// older host is read as well).
fn facts(s: &Value) -> Result<Facts, String> {
    let str_of = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(Facts {
        worker_pid: s
            .get("worker_pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok()),
        exe: str_of("exe").ok_or_else(|| format!("a status without `exe`: {s}"))?,
        generation: s.get("generation").and_then(Value::as_u64).unwrap_or(0),
        phase: str_of("phase").unwrap_or_default(),
        config: str_of("config").unwrap_or_default(),
    })
}

/// One request over a control socket: the `Op` as a JSON line out, one line back (at most
/// [`ANSWER_LIMIT`] bytes), within `timeout`.
async fn socket_request(path: &Path, op: &Op, timeout: Duration) -> Result<Value, String> {
    let shown = path.display();
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(path).await.map_err(|e| {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => {
                    format!("no apphost is running with the control socket {shown} ({e})")
                }
                _ => format!("control socket {shown}: {e}"),
            }
        })?;
        let mut line = serde_json::to_string(op).map_err(|e| e.to_string())?;
        line.push('\n');
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("control socket {shown}: {e}"))?;
        let mut answer = String::new();
        tokio::io::BufReader::new(s.take(ANSWER_LIMIT as u64))
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("control socket {shown}: {e}"))?;
        if !answer.ends_with('\n') {
            return Err(format!(
                "control socket {shown}: no whole answer (the host closed the connection, or \
                 sent more than {ANSWER_LIMIT} bytes)"
            ));
        }
        serde_json::from_str::<Value>(&answer)
            .map_err(|_| format!("control socket {shown}: unexpected answer {answer:?}"))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "control socket {shown}: no answer within {timeout:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_urls_or_sockets_and_plain_http_stays_on_this_machine() {
        let t = Target::parse("https://a.example:8443/debug/admin/", false).unwrap();
        assert!(t.is_https() && t.is_remote());
        let Kind::Admin(u) = &t.kind else {
            unreachable!()
        };
        assert_eq!(u.path, "/debug/admin");
        assert!(Target::parse("http://127.0.0.1:8199/debug/admin", false).is_ok());
        assert!(Target::parse("http://localhost:8199/debug/admin", false).is_ok());
        let e = Target::parse("http://a.example/debug/admin", false).unwrap_err();
        assert!(e.contains("--insecure"), "{e}");
        assert!(Target::parse("http://a.example/debug/admin", true).is_ok());
        let t = Target::parse("run/ctl.sock", false).unwrap();
        let Kind::Socket(p) = &t.kind else {
            unreachable!()
        };
        assert!(p.is_absolute());
        assert!(!t.is_remote());
        assert!(Target::parse("ftp://x/", false).is_err());
        assert!(Target::parse("https://a/x?y", false).is_err());
    }

    #[tokio::test]
    async fn a_control_socket_that_never_ends_its_line_is_cut_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let e = socket_request(&path, &Op::Status, Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(e.contains("no whole answer"), "{e}");
        let e = socket_request(&dir.path().join("none.sock"), &Op::Status, QUICK)
            .await
            .unwrap_err();
        assert!(e.contains("no apphost is running"), "{e}");
    }

    #[test]
    fn status_objects_are_read_leniently() {
        let f = facts(&serde_json::json!({
            "worker_pid": 42, "exe": "/opt/app/v1", "generation": 3, "phase": "serving",
            "config": "/etc/app.yaml", "something_new": [1]
        }))
        .unwrap();
        assert_eq!(
            (f.worker_pid, f.exe.as_str(), f.generation),
            (Some(42), "/opt/app/v1", 3)
        );
        assert!(facts(&serde_json::json!({"worker_pid": null})).is_err());
        assert_eq!(
            op_error(&serde_json::json!({"Err":{"error":"busy","reason":"gen 2"}})),
            "a restart is already under way: gen 2"
        );
    }
}
