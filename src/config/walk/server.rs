//! The walk of `servers:`: each server's addresses, TLS, readiness request, admin routes and
//! route table (the rest of [`Walker`] is in the parent).

use std::path::{Path, PathBuf};

use super::super::addr::ListenAddr;
use super::super::error::{ConfigError, Pos};
use super::super::file;
use super::super::pattern::RoutePattern;
use super::super::tree::{Node, Value};
use super::super::values::{expect_mode, expect_str, join, type_error};
use super::super::{AdminConfig, HttpsConfig, Params, ReadinessConfig, RouteConfig, ServerConfig};
use super::{
    ADMIN_KEYS, DEFAULT_ADMIN_PATH, DEFAULT_READINESS_TIMEOUT, HTTPS_KEYS, Listener,
    READINESS_KEYS, SERVER_KEYS, Walker, under_admin,
};

impl Walker<'_> {
    pub(super) fn servers(
        &self,
        node: &Node,
        path: &str,
    ) -> Result<Vec<ServerConfig>, ConfigError> {
        let entries = node
            .as_map()
            .ok_or_else(|| type_error(self.file, node, path, "a map of server names to servers"))?;
        if entries.is_empty() {
            return Err(self.err(node.pos, path, "there must be at least one server"));
        }
        let mut servers = Vec::with_capacity(entries.len());
        let mut listeners: Vec<Listener> = Vec::new();
        for (k, v) in entries {
            let spath = join(path, &k.name);
            if k.name.trim().is_empty() {
                return Err(self.err(k.pos, &spath, "a server name must not be empty"));
            }
            servers.push(self.server(&k.name, v, &spath, &mut listeners)?);
        }
        for (j, b) in listeners.iter().enumerate() {
            if let Some(a) = listeners[..j]
                .iter()
                .find(|a| a.addr.conflicts_with(&b.addr))
            {
                let what = if a.addr == b.addr {
                    format!(
                        "listen address {:?} is already used at {}",
                        b.addr.key(),
                        a.key_path
                    )
                } else {
                    format!(
                        "listen address {:?} conflicts with {:?} at {} (same port)",
                        b.addr.key(),
                        a.addr.key(),
                        a.key_path
                    )
                };
                return Err(self.err(b.pos, &b.key_path, what));
            }
        }
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(servers)
    }

    fn server(
        &self,
        name: &str,
        node: &Node,
        path: &str,
        listeners: &mut Vec<Listener>,
    ) -> Result<ServerConfig, ConfigError> {
        let f = self.fields(node, path, SERVER_KEYS)?;
        let http = match f.get("address") {
            Some((n, p)) => self.addresses(n, &p, listeners)?,
            None => Vec::new(),
        };
        let https = match f.get("https") {
            Some((n, p)) => Some(self.https(n, &p, listeners)?),
            None => None,
        };
        if http.is_empty() && https.is_none() {
            return Err(self.err(
                node.pos,
                path,
                "a server needs at least one address (\"address\" or \"https\")",
            ));
        }
        let admin = match f.get("admin") {
            Some((n, p)) => self.admin(n, &p)?,
            None => None,
        };
        let readiness = match f.get("readiness") {
            Some((n, p)) => Some(self.readiness(n, &p)?),
            None => None,
        };
        let access_log = match f.get("access_log") {
            Some((n, p)) => crate::config::access_log::parse(self.file, self.base_dir, n, &p)?,
            None => None,
        };
        let routes = match f.get("routes") {
            Some((n, p)) => self.routes(n, &p)?,
            None => Vec::new(),
        };
        let has_unix = http
            .iter()
            .chain(https.iter().flat_map(|h| &h.addresses))
            .any(|a| a.unix_path().is_some());
        let unix_mode = match f.get("unix_mode") {
            Some((n, p)) if !has_unix => {
                return Err(self.err(
                    n.pos,
                    &p,
                    "unix_mode is set but the server has no unix: address",
                ));
            }
            Some((n, p)) => Some(expect_mode(self.file, n, &p)?),
            None => None,
        };
        let proxy_protocol = self.bool_or(&f, "proxy_protocol", false)?;
        let defer_accept = self.bool_or(&f, "defer_accept", true)?;
        if let Some(a) = &admin
            && let Some(r) = routes
                .iter()
                .find(|r| under_admin(r.pattern.key(), &a.path))
        {
            return Err(self.err(
                r.params.pos,
                &r.params.key_path,
                format!(
                    "the admin routes at {:?} would answer every request for this route; \
                     move one of them (admin: {{ path: /another/path }})",
                    a.path
                ),
            ));
        }
        let max_connections = match f.get("max_connections") {
            Some((n, p)) => crate::config::guards::max_connections(self.file, n, &p)?,
            None => crate::config::guards::DEFAULT_MAX_CONNECTIONS,
        };
        let max_request_body = match f.get("max_request_body") {
            Some((n, p)) => crate::config::guards::body_limit(self.file, n, &p)?,
            None => None,
        };
        Ok(ServerConfig {
            name: name.to_string(),
            http,
            https,
            admin,
            readiness,
            access_log,
            routes,
            unix_mode,
            proxy_protocol,
            defer_accept,
            max_connections,
            max_request_body,
        })
    }

    /// `readiness: { path, timeout }` (or just the path as a string).
    fn readiness(&self, node: &Node, path: &str) -> Result<ReadinessConfig, ConfigError> {
        let (req_path, timeout) = match &node.value {
            Value::Str(_) => (
                self.non_empty_str(node, path)?.to_string(),
                DEFAULT_READINESS_TIMEOUT,
            ),
            _ => {
                let f = self.fields(node, path, READINESS_KEYS)?;
                let (n, p) = self.required(&f, "path")?;
                (
                    self.non_empty_str(n, &p)?.to_string(),
                    self.duration_or(&f, "timeout", DEFAULT_READINESS_TIMEOUT)?,
                )
            }
        };
        if !req_path.starts_with('/') {
            return Err(self.err(
                node.pos,
                path,
                format!("the readiness path must start with \"/\", found {req_path:?}"),
            ));
        }
        if timeout.is_zero() {
            return Err(self.err(node.pos, path, "the readiness timeout must not be zero"));
        }
        Ok(ReadinessConfig {
            path: req_path,
            timeout,
        })
    }

    /// A string or a non-empty list of strings, each a listen address.
    fn addresses(
        &self,
        node: &Node,
        path: &str,
        listeners: &mut Vec<Listener>,
    ) -> Result<Vec<ListenAddr>, ConfigError> {
        let items: Vec<(&Node, String)> = match &node.value {
            Value::Str(_) => vec![(node, path.to_string())],
            Value::Seq(items) if items.is_empty() => {
                return Err(self.err(node.pos, path, "expected at least one address"));
            }
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{path}[{i}]")))
                .collect(),
            _ => {
                return Err(type_error(
                    self.file,
                    node,
                    path,
                    "an address or a list of addresses",
                ));
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (n, p) in items {
            let s = expect_str(self.file, n, &p)?;
            let addr =
                ListenAddr::parse_in(s, self.base_dir).map_err(|m| self.err(n.pos, &p, m))?;
            listeners.push(Listener {
                addr: addr.clone(),
                key_path: p,
                pos: n.pos,
            });
            out.push(addr);
        }
        Ok(out)
    }

    fn https(
        &self,
        node: &Node,
        path: &str,
        listeners: &mut Vec<Listener>,
    ) -> Result<HttpsConfig, ConfigError> {
        let f = self.fields(node, path, HTTPS_KEYS)?;
        let (an, ap) = self.required(&f, "address")?;
        let addresses = self.addresses(an, &ap, listeners)?;
        let (cn, cp) = self.required(&f, "cert")?;
        let cert = self.readable_file(cn, &cp)?;
        let (kn, kp) = self.required(&f, "key")?;
        let key = self.readable_file(kn, &kp)?;
        Ok(HttpsConfig {
            addresses,
            cert,
            key,
            pos: node.pos,
        })
    }

    /// A path to a file that exists and can be opened (its content is checked elsewhere).
    fn readable_file(&self, node: &Node, path: &str) -> Result<PathBuf, ConfigError> {
        let p = self.path(node, path)?;
        match file::open_regular(&p, file::MAX_PEM_BYTES) {
            Ok(_) => Ok(p),
            Err(e) => Err(self.err(
                node.pos,
                path,
                format!("cannot read {:?}: {e}", p.display().to_string()),
            )),
        }
    }

    fn admin(&self, node: &Node, path: &str) -> Result<Option<AdminConfig>, ConfigError> {
        let defaults = AdminConfig {
            path: DEFAULT_ADMIN_PATH.to_string(),
            token: None,
            allowed_exe_dirs: Vec::new(),
            allowed_hosts: Vec::new(),
        };
        match &node.value {
            Value::Bool(true) => return Ok(Some(defaults)),
            Value::Bool(false) => return Ok(None),
            Value::Map(_) => {}
            _ => return Err(type_error(self.file, node, path, "a map or a boolean")),
        }
        let f = self.fields(node, path, ADMIN_KEYS)?;
        let mut admin = defaults;
        if let Some((n, p)) = f.get("path") {
            let s = expect_str(self.file, n, &p)?;
            if !s.starts_with('/') {
                return Err(self.err(n.pos, &p, format!("{s:?} must start with /")));
            }
            if s.len() > 1 && s.ends_with('/') {
                return Err(self.err(n.pos, &p, format!("{s:?} must not end with /")));
            }
            if s.chars().any(|c| c.is_whitespace() || c == '*') {
                return Err(self.err(n.pos, &p, format!("{s:?} must not contain spaces or *")));
            }
            admin.path = s.to_string();
        }
        let token = match f.get("token") {
            Some((n, p)) => Some(self.non_empty_str(n, &p)?.to_string()),
            None => None,
        };
        if let Some((n, p)) = f.get("token_file") {
            if token.is_some() {
                return Err(self.err(
                    n.pos,
                    &p,
                    "token and token_file are mutually exclusive (use one)",
                ));
            }
            let file = self.path(n, &p)?;
            let shown = file.display().to_string();
            let (text, meta) = file::read_regular(&file, file::MAX_TOKEN_BYTES)
                .map_err(|e| self.err(n.pos, &p, format!("cannot read {shown:?}: {e}")))?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            if mode & 0o044 != 0 {
                let w = self.err(
                    n.pos,
                    &p,
                    format!(
                        "{shown:?} is readable by group or others (mode {:o}); \
                         `chmod 600` it so only this user can read the token",
                        mode & 0o777
                    ),
                );
                self.warnings.borrow_mut().push(w.to_string());
            }
            let t = text.trim();
            if t.is_empty() {
                return Err(self.err(n.pos, &p, format!("{shown:?} is empty")));
            }
            admin.token = Some(t.to_string());
        } else {
            admin.token = token;
        }
        if let Some((n, p)) = f.get("allowed_exe_dirs") {
            let items = n
                .as_seq()
                .ok_or_else(|| type_error(self.file, n, &p, "a list of directories"))?;
            for (i, item) in items.iter().enumerate() {
                let dir = self.path(item, &format!("{p}[{i}]"))?;
                admin.allowed_exe_dirs.push(dir);
            }
        }
        if let Some((n, p)) = f.get("allowed_hosts") {
            let items = n
                .as_seq()
                .ok_or_else(|| type_error(self.file, n, &p, "a list of host names"))?;
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let name = self.non_empty_str(item, &ip)?;
                if name.contains(['/', ':', ' ', '*']) {
                    return Err(self.err(
                        item.pos,
                        &ip,
                        format!("{name:?} must be a host name without scheme, port or wildcard"),
                    ));
                }
                admin
                    .allowed_hosts
                    .push(name.trim_end_matches('.').to_string());
            }
        }
        Ok(Some(admin))
    }

    fn routes(&self, node: &Node, path: &str) -> Result<Vec<RouteConfig>, ConfigError> {
        let entries = node
            .as_map()
            .ok_or_else(|| type_error(self.file, node, path, "a map of paths to handlers"))?;
        let mut routes = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let rpath = join(path, &k.name);
            let pattern =
                RoutePattern::parse(&k.name).map_err(|e| self.err(k.pos, &rpath, e.to_string()))?;
            routes.push(self.route(pattern, v, &rpath)?);
        }
        Ok(routes)
    }

    fn route(
        &self,
        pattern: RoutePattern,
        node: &Node,
        path: &str,
    ) -> Result<RouteConfig, ConfigError> {
        let params = |pos: Pos, entries: Vec<(String, Node)>| Params {
            file: self.file.map(Path::to_path_buf),
            key_path: path.to_string(),
            pos,
            base_dir: self.base_dir.to_path_buf(),
            entries,
        };
        match &node.value {
            Value::Str(_) => {
                let handler = self.non_empty_str(node, path)?;
                Ok(RouteConfig {
                    pattern,
                    handler: handler.to_string(),
                    handler_pos: node.pos,
                    params: params(node.pos, Vec::new()),
                })
            }
            Value::Map(entries) => {
                let Some((_, h)) = entries.iter().find(|(k, _)| k.name == "handler") else {
                    return Err(self.err(node.pos, path, "missing key \"handler\""));
                };
                let handler = self.non_empty_str(h, &join(path, "handler"))?;
                let rest = entries
                    .iter()
                    .filter(|(k, _)| k.name != "handler")
                    .map(|(k, v)| (k.name.clone(), v.clone()))
                    .collect();
                Ok(RouteConfig {
                    pattern,
                    handler: handler.to_string(),
                    handler_pos: h.pos,
                    params: params(node.pos, rest),
                })
            }
            _ => Err(type_error(
                self.file,
                node,
                path,
                "a handler name or a map with a \"handler\" key",
            )),
        }
    }
}
