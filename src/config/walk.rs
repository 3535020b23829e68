//! The tree walk: turns a parsed [`Node`] tree into a validated [`Config`]; also file loading and
//! config file lookup. The typed reads it shares with [`Params`](super::Params) are in
//! [`super::values`].

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::addr::ListenAddr;
use super::error::{ConfigError, Pos};
use super::file;
use super::tree::{self, Key, Node, Value};
use super::values::{
    expect_bool, expect_duration, expect_path, expect_str, join, log_level, type_error, unknown_key,
};
use super::{Config, ConfigSource, ControlConfig, Format, LogConfig, LogFormat, WatchConfig};

mod server;

/// Files tried, in order, when neither `-c` nor `$APPHOST_CONFIG` says which to use.
pub(super) const CANDIDATES: [&str; 4] = [
    "server.yaml",
    "server.toml",
    "config/server.yaml",
    "config/server.toml",
];

const TOP_KEYS: &[&str] = &[
    "graceful",
    "graceful_timeout",
    "shutdown_timeout",
    "shutdown_delay",
    "keepalive_grace",
    "header_read_timeout",
    "idle_timeout",
    "send_timeout",
    "stream_grace",
    "http2_max_concurrent_streams",
    "warm_standby",
    "log",
    "control",
    "watch",
    "recycle",
    "servers",
];
const SERVER_KEYS: &[&str] = &[
    "address",
    "https",
    "admin",
    "readiness",
    "access_log",
    "routes",
    "unix_mode",
    "proxy_protocol",
    "defer_accept",
    "max_connections",
    "max_request_body",
];
const READINESS_KEYS: &[&str] = &["path", "timeout"];
const HTTPS_KEYS: &[&str] = &["address", "cert", "key"];
const ADMIN_KEYS: &[&str] = &[
    "path",
    "token",
    "token_file",
    "allowed_exe_dirs",
    "allowed_hosts",
];
const LOG_KEYS: &[&str] = &["format", "level"];
const CONTROL_KEYS: &[&str] = &["socket"];
const WATCH_KEYS: &[&str] = &["executable", "config", "settle"];

const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_KEEPALIVE_GRACE: Duration = Duration::from_secs(1);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `http2_max_concurrent_streams` default.
const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
const DEFAULT_SETTLE: Duration = Duration::from_millis(300);
const DEFAULT_ADMIN_PATH: &str = "/debug/admin";

// ---------------------------------------------------------------------------------------------
// Loading and lookup

/// `Config::load`: format from the extension, read, parse and walk.
///
/// The path is kept as given, only made absolute (not resolved): a symlinked config (a
/// Kubernetes ConfigMap volume, where `server.yaml` links through a `..data` symlink that is
/// swapped on update) is read through the link at every load, so the watcher and the next
/// restart see the new target, and the derived control socket keeps its name. Relative paths in
/// it resolve against the directory of that path, where a ConfigMap's other keys also are.
pub(super) fn load(path: &Path) -> Result<Config, ConfigError> {
    if path.is_dir() {
        return Err(ConfigError::new(
            Some(path),
            None,
            "",
            "is a directory (expected a config file: -c DIR/server.yaml)",
        ));
    }
    let Some(format) = Format::from_path(path) else {
        let ext = path
            .extension()
            .map(|e| format!("extension \".{}\"", e.to_string_lossy()))
            .unwrap_or_else(|| "file name without an extension".to_string());
        return Err(ConfigError::new(
            Some(path),
            None,
            "",
            format!("unsupported config {ext} (expected .yaml, .yml or .toml)"),
        ));
    };
    let (text, _) = file::read_regular(path, file::MAX_CONFIG_BYTES).map_err(|e| {
        ConfigError::new(
            Some(path),
            None,
            "",
            format!("cannot read the config file: {e}"),
        )
    })?;
    let abs = std::path::absolute(path).map_err(|e| ConfigError::io(path, e))?;
    let base_dir = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    parse(
        &text,
        format,
        ConfigSource::File(abs),
        Some(path),
        &base_dir,
    )
}

/// `parse_str`: errors name the source's file; relative paths resolve against its directory
/// (the current directory for the embedded default).
pub(super) fn parse_source(
    text: &str,
    format: Format,
    source: ConfigSource,
) -> Result<Config, ConfigError> {
    let (file, base_dir) = match &source {
        ConfigSource::File(p) => (
            Some(p.clone()),
            p.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ),
        ConfigSource::Embedded => (
            None,
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        ),
    };
    parse(text, format, source, file.as_deref(), &base_dir)
}

fn parse(
    text: &str,
    format: Format,
    source: ConfigSource,
    file: Option<&Path>,
    base_dir: &Path,
) -> Result<Config, ConfigError> {
    let root = tree::parse(text, format).map_err(|mut e| {
        e.file = file.map(Path::to_path_buf);
        e
    })?;
    Walker {
        file,
        base_dir,
        warnings: Default::default(),
    }
    .config(&root, source)
}

/// Which config file to use, looking in `dir` (the current directory in production) and at the
/// value of `$APPHOST_CONFIG`: that path if set and non-empty (an error if it does not exist),
/// else the first existing of `server.yaml`, `server.toml`, `config/server.yaml`,
/// `config/server.toml`, else `None` (the embedded default). Relative paths are joined to `dir`.
pub(crate) fn locate_in(
    dir: &Path,
    env_value: Option<&OsStr>,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        let path = dir.join(v);
        return match fs::metadata(&path) {
            Ok(_) => Ok(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::new(
                Some(&path),
                None,
                "",
                "the file named by $APPHOST_CONFIG does not exist",
            )),
            Err(e) => Err(ConfigError::io(&path, e)),
        };
    }
    Ok(CANDIDATES.iter().map(|c| dir.join(c)).find(|p| p.exists()))
}

/// Whether every path the route `pattern` matches is taken by the admin routes at
/// `admin_path` (`{path}` and `{path}/*action`), so the route would never answer.
fn under_admin(pattern: &str, admin_path: &str) -> bool {
    let prefix = match pattern.find("/*") {
        Some(i) => &pattern[..i],
        None => pattern,
    };
    let prefix = prefix.trim_end_matches('/');
    let admin = admin_path.trim_end_matches('/');
    admin.is_empty()
        || prefix == admin
        || prefix
            .strip_prefix(admin)
            .is_some_and(|rest| rest.starts_with('/'))
}

// ---------------------------------------------------------------------------------------------
// The walk

/// A listener found in the file, for the conflict check.
struct Listener {
    addr: ListenAddr,
    key_path: String,
    pos: Pos,
}

/// The entries of a map whose keys were all checked against a list of allowed keys.
struct Fields<'n> {
    node: &'n Node,
    entries: &'n [(Key, Node)],
    path: String,
}

impl<'n> Fields<'n> {
    /// The value under `key` and its key path.
    fn get(&self, key: &str) -> Option<(&'n Node, String)> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| (v, join(&self.path, key)))
    }
}

struct Walker<'a> {
    file: Option<&'a Path>,
    base_dir: &'a Path,
    /// Warnings found on the way (see [`Config::warnings`]).
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Walker<'_> {
    fn err(&self, pos: Pos, key_path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, Some(pos), key_path, message)
    }

    /// A map with only `allowed` keys.
    fn fields<'n>(
        &self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Result<Fields<'n>, ConfigError> {
        let entries = node
            .as_map()
            .ok_or_else(|| type_error(self.file, node, path, "a map"))?;
        for (k, _) in entries {
            if !allowed.contains(&k.name.as_str()) {
                return Err(unknown_key(
                    self.file,
                    &k.name,
                    k.pos,
                    &join(path, &k.name),
                    allowed,
                ));
            }
        }
        Ok(Fields {
            node,
            entries,
            path: path.to_string(),
        })
    }

    fn required<'n>(&self, f: &Fields<'n>, key: &str) -> Result<(&'n Node, String), ConfigError> {
        f.get(key)
            .ok_or_else(|| self.err(f.node.pos, &f.path, format!("missing key {key:?}")))
    }

    fn bool_or(&self, f: &Fields<'_>, key: &str, default: bool) -> Result<bool, ConfigError> {
        match f.get(key) {
            Some((n, p)) => expect_bool(self.file, n, &p),
            None => Ok(default),
        }
    }

    fn duration_or(
        &self,
        f: &Fields<'_>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match f.get(key) {
            Some((n, p)) => expect_duration(self.file, n, &p),
            None => Ok(default),
        }
    }

    fn path(&self, node: &Node, key_path: &str) -> Result<PathBuf, ConfigError> {
        expect_path(self.file, self.base_dir, node, key_path)
    }

    /// A non-empty string.
    fn non_empty_str<'n>(&self, node: &'n Node, key_path: &str) -> Result<&'n str, ConfigError> {
        let s = expect_str(self.file, node, key_path)?;
        if s.trim().is_empty() {
            return Err(self.err(node.pos, key_path, "must not be empty"));
        }
        Ok(s)
    }

    fn config(&self, root: &Node, source: ConfigSource) -> Result<Config, ConfigError> {
        if root.value == Value::Null {
            return Err(ConfigError::new(
                self.file,
                None,
                "",
                "the config is empty (it needs at least a \"servers\" map)",
            ));
        }
        let top = self.fields(root, "", TOP_KEYS)?;
        let graceful = self.bool_or(&top, "graceful", false)?;
        let graceful_timeout =
            self.duration_or(&top, "graceful_timeout", DEFAULT_GRACEFUL_TIMEOUT)?;
        let shutdown_timeout =
            self.duration_or(&top, "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)?;
        let shutdown_delay = self.duration_or(&top, "shutdown_delay", Duration::ZERO)?;
        let keepalive_grace = self.duration_or(&top, "keepalive_grace", DEFAULT_KEEPALIVE_GRACE)?;
        let header_read_timeout =
            self.duration_or(&top, "header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT)?;
        let idle_timeout = self.duration_or(&top, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?;
        let send_timeout = self.duration_or(&top, "send_timeout", DEFAULT_SEND_TIMEOUT)?;
        let stream_grace = match top.get("stream_grace") {
            Some((n, p)) => {
                let grace = expect_duration(self.file, n, &p)?;
                if grace >= shutdown_timeout {
                    return Err(self.err(
                        n.pos,
                        &p,
                        format!(
                            "must be shorter than shutdown_timeout ({}), or the drain ends before \
                             the host closes the streams left open",
                            super::duration::format_duration(shutdown_timeout)
                        ),
                    ));
                }
                Some(grace)
            }
            None => None,
        };
        let http2_max_concurrent_streams = match top.get("http2_max_concurrent_streams") {
            Some((n, p)) => n
                .as_int()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| i >= 1)
                .ok_or_else(|| type_error(self.file, n, &p, "a positive integer"))?,
            None => DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
        };
        let warm_standby = self.bool_or(&top, "warm_standby", graceful)?;
        let log = match top.get("log") {
            Some((n, p)) => self.log(n, &p)?,
            None => LogConfig {
                format: LogFormat::Text,
                level: "info".to_string(),
            },
        };
        let control = match top.get("control") {
            Some((n, p)) => {
                let f = self.fields(n, &p, CONTROL_KEYS)?;
                ControlConfig {
                    socket: match f.get("socket") {
                        Some((n, p)) => Some(self.path(n, &p)?),
                        None => None,
                    },
                }
            }
            None => ControlConfig::default(),
        };
        let watch = match top.get("watch") {
            Some((n, p)) => {
                let f = self.fields(n, &p, WATCH_KEYS)?;
                WatchConfig {
                    executable: self.bool_or(&f, "executable", graceful)?,
                    config: self.bool_or(&f, "config", graceful)?,
                    settle: self.duration_or(&f, "settle", DEFAULT_SETTLE)?,
                }
            }
            None => WatchConfig {
                executable: graceful,
                config: graceful,
                settle: DEFAULT_SETTLE,
            },
        };
        let recycle = match top.get("recycle") {
            Some((n, p)) => Some(super::guards::recycle(self.file, n, &p)?),
            None => None,
        };
        let Some((servers_node, servers_path)) = top.get("servers") else {
            return Err(ConfigError::new(
                self.file,
                None,
                "",
                "missing key \"servers\" (a map of server names to servers)",
            ));
        };
        let servers = self.servers(servers_node, &servers_path)?;
        Ok(Config {
            source,
            graceful,
            graceful_timeout,
            shutdown_timeout,
            shutdown_delay,
            keepalive_grace,
            idle_timeout,
            send_timeout,
            stream_grace,
            http2_max_concurrent_streams,
            header_read_timeout,
            warm_standby,
            log,
            control,
            watch,
            recycle,
            servers,
            warnings: self.warnings.take(),
        })
    }

    fn log(&self, node: &Node, path: &str) -> Result<LogConfig, ConfigError> {
        let f = self.fields(node, path, LOG_KEYS)?;
        let format = match f.get("format") {
            Some((n, p)) => match expect_str(self.file, n, &p)? {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.err(
                        n.pos,
                        &p,
                        format!("unknown log format {other:?} (expected text or json)"),
                    ));
                }
            },
            None => LogFormat::Text,
        };
        let level = match f.get("level") {
            Some((n, p)) => {
                let text = self.non_empty_str(n, &p)?.trim().to_string();
                log_level(&text).map_err(|m| self.err(n.pos, &p, m))?;
                text
            }
            None => "info".to_string(),
        };
        Ok(LogConfig { format, level })
    }
}
