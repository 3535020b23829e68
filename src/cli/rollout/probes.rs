//! Where a target's `ready` and `/metrics` routes are ([`Probes`]), and for a control socket
//! target how they are found in the host's own config: the first route with the `ready`
//! handler (or `--ready-path`), and a route with the `metrics` handler or else the admin
//! routes' `{path}/metrics` (with the admin token from that config), reached on the server's
//! first TCP listener (`:PORT` and `0.0.0.0` as `127.0.0.1`, `[::]` as `[::1]`; plain HTTP
//! preferred).

use crate::cli::rollout::http::Url;
use crate::config::{Config, ListenAddr, RouteConfig, ServerConfig};

/// Where a target's `ready` and `/metrics` routes are, and which routes of the counter are the
/// rollout's own requests.
#[derive(Debug, Clone)]
pub(crate) struct Probes {
    /// The `ready` route.
    pub ready: Url,
    /// The `/metrics` route and the bearer token it needs, if it was found.
    pub metrics: Option<(Url, Option<String>)>,
    /// Route labels not counted (the ready and metrics routes).
    pub(crate) skip_routes: Vec<String>,
    /// Route labels starting with this are not counted (the admin routes).
    pub(crate) skip_prefix: Option<String>,
}

impl Probes {
    /// Whether a series with this `route` label is the rollout's own traffic.
    pub(crate) fn skips(&self, route: &str) -> bool {
        self.skip_routes.iter().any(|r| r == route)
            || self
                .skip_prefix
                .as_deref()
                .is_some_and(|p| route == p || route.starts_with(&format!("{p}/")))
    }
}

/// The route label a request path is counted under when it is an exact route.
pub(crate) fn route_of(path: &str) -> String {
    path.split('?').next().unwrap_or(path).to_string()
}

/// How to reach a listener from this machine, and whether it is TLS; `None` for a port chosen
/// by the system (nobody can know it from the config), and for Unix and systemd addresses.
fn reach(a: &ListenAddr, https: bool) -> Option<Url> {
    let sa = a.socket_addrs()?;
    if sa.port() == 0 {
        return None;
    }
    let host = if a.is_all_interfaces() {
        "127.0.0.1".to_string()
    } else {
        match sa.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => "::1".into(),
            ip => ip.to_string(),
        }
    };
    Some(Url {
        https,
        host,
        port: sa.port(),
        path: "/".into(),
    })
}

/// A server's first listener this machine can reach, plain HTTP first.
fn first_listener(s: &ServerConfig) -> Option<Url> {
    let plain = s.http.iter().find_map(|a| reach(a, false));
    plain.or_else(|| {
        s.https
            .iter()
            .flat_map(|h| &h.addresses)
            .find_map(|a| reach(a, true))
    })
}

/// The `ready` and `/metrics` routes of a host, from its config (see the module doc).
pub(crate) fn from_config(config: &Config, ready_path: Option<&str>) -> Result<Probes, String> {
    let where_ = |s: &ServerConfig| {
        first_listener(s).ok_or_else(|| {
            format!(
                "servers.{}: no TCP listener this machine can reach (a fixed port is needed)",
                s.name
            )
        })
    };
    let exact = |r: &RouteConfig| r.pattern.wildcard_prefix().is_none();
    let (ready, ready_route) = match ready_path {
        Some(p) => {
            // The server that routes the path, else the first with a listener.
            let s = config
                .servers
                .iter()
                .find(|s| s.routes.iter().any(|r| r.pattern.as_str() == route_of(p)))
                .or_else(|| config.servers.iter().find(|s| first_listener(s).is_some()))
                .ok_or("no server with a TCP listener in the host's config")?;
            (where_(s)?.with_path(p), route_of(p))
        }
        None => {
            let (s, r) = config
                .servers
                .iter()
                .flat_map(|s| s.routes.iter().map(move |r| (s, r)))
                .find(|(_, r)| r.handler == "ready" && exact(r))
                .ok_or(
                    "no route with the `ready` handler in the host's config: add one \
                     (`\"/ready\": ready`) or name a path with --ready-path",
                )?;
            (
                where_(s)?.with_path(r.pattern.as_str()),
                r.pattern.as_str().to_string(),
            )
        }
    };
    let mut skip_routes = vec![ready_route];
    let mut skip_prefix = None;
    let metrics_route = config
        .servers
        .iter()
        .flat_map(|s| s.routes.iter().map(move |r| (s, r)))
        .find(|(s, r)| r.handler == "metrics" && exact(r) && first_listener(s).is_some());
    let metrics = if let Some((s, r)) = metrics_route {
        skip_routes.push(r.pattern.as_str().to_string());
        first_listener(s).map(|u| (u.with_path(r.pattern.as_str()), None))
    } else {
        config
            .servers
            .iter()
            .find_map(|s| Some((first_listener(s)?, s.admin.as_ref()?)))
            .map(|(u, a)| {
                let base = a.path.trim_end_matches('/');
                skip_prefix = Some(base.to_string());
                (u.with_path(&format!("{base}/metrics")), a.token.clone())
            })
    };
    Ok(Probes {
        ready,
        metrics,
        skip_routes,
        skip_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, Format, parse_str};

    fn config(text: &str) -> Config {
        parse_str(text, Format::Yaml, ConfigSource::Embedded).unwrap()
    }

    #[test]
    fn a_hosts_ready_and_metrics_routes_are_found_in_its_config() {
        let c = config(
            "servers:\n  api:\n    address: \"127.0.0.1:9001\"\n    routes:\n      \
             /pid: pid\n  ops:\n    address: \":9002\"\n    admin: { path: /adm, token: t0k }\n    \
             routes:\n      /healthz: ready\n      /files/*p: { handler: static, dir: . }\n",
        );
        let p = from_config(&c, None).unwrap();
        assert_eq!(p.ready.to_string(), "http://127.0.0.1:9002/healthz");
        let (m, tok) = p.metrics.clone().unwrap();
        assert_eq!(m.to_string(), "http://127.0.0.1:9002/adm/metrics");
        assert_eq!(tok.as_deref(), Some("t0k"));
        assert!(p.skips("/healthz") && p.skips("/adm") && p.skips("/adm/*action"));
        assert!(!p.skips("/pid") && !p.skips("/admx"));

        // --ready-path: on the server that routes it.
        let p = from_config(&c, Some("/pid?x=1")).unwrap();
        assert_eq!(p.ready.to_string(), "http://127.0.0.1:9001/pid?x=1");
        assert!(p.skips("/pid"));
    }

    #[test]
    fn a_metrics_route_is_preferred_and_wildcard_listeners_are_reached_on_loopback() {
        let c = config(
            "servers:\n  web:\n    address: \"[::]:9003\"\n    admin: true\n    routes:\n      \
             /ready: ready\n      /metrics: metrics\n",
        );
        // `metrics` may not be registered in this build: the config reader does not check
        // handler names (the plan does).
        let p = from_config(&c, None).unwrap();
        assert_eq!(p.ready.to_string(), "http://[::1]:9003/ready");
        let (m, tok) = p.metrics.clone().unwrap();
        assert_eq!(
            (m.to_string().as_str(), tok),
            ("http://[::1]:9003/metrics", None)
        );
        assert!(p.skips("/metrics") && !p.skips("/debug/admin"));
    }

    #[test]
    fn a_config_without_a_ready_route_says_how_to_add_one() {
        let c = config(
            "servers:\n  web:\n    address: \"127.0.0.1:9004\"\n    routes:\n      /: hello\n",
        );
        let e = from_config(&c, None).unwrap_err();
        assert!(e.contains("--ready-path"), "{e}");
        let p = from_config(&c, Some("/")).unwrap();
        assert!(p.metrics.is_none());
        let c = config(
            "servers:\n  web:\n    address: \"127.0.0.1:0\"\n    routes:\n      /r: ready\n",
        );
        assert!(from_config(&c, None).unwrap_err().contains("fixed port"));
    }
}
